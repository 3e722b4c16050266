"""Cryptographic helpers shared by the server's services."""
