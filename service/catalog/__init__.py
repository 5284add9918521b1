"""Agents, Retell LLMs and phone numbers: read from ``agents/`` (``agent_files``), kept in Redis (``store``), their
URLs and headers checked against the outbound policy (``targets``)."""
