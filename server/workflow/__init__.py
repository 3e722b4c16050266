"""Teller workflow: the queue, transactions and their approval rules, delivery to the core bank."""
