"""Calls to the business: signed lifecycle events from a durable outbox, and the ``chat_inbound`` decision."""
