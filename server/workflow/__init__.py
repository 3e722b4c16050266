"""Teller workflow: the queue, transactions with their approval rules, and delivery to the core bank."""
