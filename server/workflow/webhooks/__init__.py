"""Delivery of approved transactions to the core bank: outbox, signing, HTTP (docs/webhooks.md)."""
