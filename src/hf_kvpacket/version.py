"""The library version (one place; the package face, configs and benchmarks read it here)."""

__version__ = "0.1.0"
