"""The MLflow Model Registry as a daemon registry (`--registry-kind mlflow`, location: tracking URI).

An optional extra (`pip install convrepair[mlflow]`): without mlflow installed the plugin is
listed as unavailable and says why. Reviewer hooks (approve/reject/verify on `models:/` and
`runs:/` URIs) are in `review.py`.
"""

from convrepair.plugins import Plugin

PLUGIN = Plugin(name="mlflow", description="the MLflow Model Registry (polled; results written back as run artifacts and tags)",
                requires=("mlflow",))


@PLUGIN.registry("mlflow", description="TRACKING_URI[?models=a,b&poll_seconds=10]: versions of models tagged "
                                       "convrepair.enabled=true (or named), config in the tag convrepair.toml",
                 uri_schemes=("models:/", "runs:/"))
def open_mlflow(location: str | None = None, **options):
    import os

    from convrepair.errors import BadInput, PluginUnavailable

    reason = PLUGIN.unavailable_reason()
    if reason is not None:
        raise PluginUnavailable(f"the mlflow registry is unavailable: {reason} (pip install 'convrepair[mlflow]')")
    location = location or os.environ.get("MLFLOW_TRACKING_URI")
    if not location:
        raise BadInput("no MLflow tracking URI: give one, or set MLFLOW_TRACKING_URI")
    from convrepair_plugins.mlflow.registry import MlflowRegistry

    options.pop("quiet_seconds", None)
    return MlflowRegistry(location, **options)
