"""Compliance: sales scripts, analyzers and reports (see docs/architecture.md)."""
