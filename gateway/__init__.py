"""Data-forwarding gateway with field mapping."""

__version__ = "0.1.0"
