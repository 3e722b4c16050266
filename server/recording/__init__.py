"""The dual recording inside a live session: consent, marks, and the worker's recorder."""
