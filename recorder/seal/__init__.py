"""Sealing of recordings: streaming encryption, key wrapping, signing and the archive manifest.

The format is specified in docs/archive-format.md; these modules are one implementation of it.
"""
