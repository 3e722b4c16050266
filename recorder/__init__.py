"""Dual recording: capture of forwarded media, sealing, archive store (see docs/architecture.md)."""

__version__ = "0.1.0"
