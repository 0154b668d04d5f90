"""The daemon: a loop beside a model registry that runs convert → check → repair → sign per version."""
