"""The red-team suite: models and worker code that attack the trust boundary. Every test here
plays the attacker inside the contained worker (or hands the parent a hostile model) and checks
that the boundary holds. Under CI=true a machine without containment fails them."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def contained() -> None:
    from convrepair.contain import probe

    containment = probe()
    if containment.in_force:
        return
    message = f"no containment on this machine: {containment.reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: the red-team tests must run)")
    pytest.skip(message)
