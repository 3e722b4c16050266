"""Transactions: request, customer's signature, approval rules, signed record (docs/workflow.md)."""
