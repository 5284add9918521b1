"""The phases of ``bench.run``, one module each (``bench/README.md``, *The numbers*): ``ack`` (webhook
acknowledgement latency), ``turns`` (turns per second against the floor, and the flow comparison), ``cpu`` (CPU per
text of a first text, a follow-up and an end), ``count`` (Redis commands per text), ``slow`` (a slow LLM and many
conversations, at 200 and 400 texts a second)."""
