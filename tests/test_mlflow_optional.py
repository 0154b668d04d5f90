"""mlflow is an optional extra: without it the plugin is listed as unavailable, saying why and how
to get it, and the daemon refuses `--registry-kind mlflow` with that one line."""

from __future__ import annotations

import importlib.util

import pytest

from convrepair.errors import PluginUnavailable


@pytest.fixture
def without_mlflow(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name.split(".")[0] == "mlflow" else real(name, *a, **k))


def test_without_mlflow_the_registry_is_listed_unavailable_with_its_reason(without_mlflow):
    from convrepair.plugins import discover

    registry = discover()
    plugin = registry.plugin("mlflow")
    assert "mlflow" in registry.registries
    assert plugin.unavailable_reason() == "python package 'mlflow' is not installed"
    with pytest.raises(PluginUnavailable, match=r"pip install 'convrepair\[mlflow\]'"):
        registry.registries["mlflow"].open("http://127.0.0.1:5000")


def test_log_uris_go_to_the_registry_that_claims_them(without_mlflow):
    from convrepair.daemon.registry import registry_for_uri

    assert registry_for_uri("logs/repair.log.dsse.json") is None  # a local path: the ledger as before
    with pytest.raises(PluginUnavailable):
        registry_for_uri("models:/digits@approved", "http://127.0.0.1:5000")
