"""Redis: the connection, every key (``keys``), token locks, due sets, idempotency. Only here are keys built."""
