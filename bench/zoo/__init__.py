"""The model zoo: real model families built offline (see manifest.py and build.py)."""
