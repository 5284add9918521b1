"""Retell's JSON shapes as pydantic models: agent and number files, chat objects (``models``), request bodies."""
