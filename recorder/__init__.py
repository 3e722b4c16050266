"""Dual recording: capture of forwarded media, sealing, archive store (see docs/architecture.md)."""
