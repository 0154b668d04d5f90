"""The built-in model registry: a directory in NVIDIA Triton's layout (MODEL/VERSION/model.EXT)."""

from convrepair.plugins import Plugin

PLUGIN = Plugin(name="directory", description="a registry directory in Triton's model-repository layout")


@PLUGIN.registry("directory", description="REGISTRY/<model>/<version>/model.<ext> with convrepair.toml per model")
def open_directory(location: str, quiet_seconds: float = 5.0, parse_grace_seconds: float | None = None,
                   allow_read: tuple = (), **_options):
    from pathlib import Path

    from convrepair.daemon.registry import DirectoryRegistry

    return DirectoryRegistry(Path(location), quiet_seconds, parse_grace_seconds, tuple(Path(p) for p in allow_read))
