"""convrepair: convert models, prove the conversion on real data, localize and repair faults."""

__version__ = "0.1.0"
