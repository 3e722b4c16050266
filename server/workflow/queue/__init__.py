"""The public queue: tickets, the elderly lane, callbacks and routing (docs/workflow-queue.md)."""
