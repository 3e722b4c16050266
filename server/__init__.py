"""vteller server: the aiohttp application (signaling, SFU, auth, storage)."""

__version__ = "0.1.0"
