"""hiertree's version, in a module of its own so that anything may ask for it without importing the package's API."""

__version__ = "0.1.0"
