"""Parley: a self-hosted runtime for two-way SMS chat agents, compatible with Retell AI's chat API.

Start at ``app.create_app`` (the one composition root). The inbound path is ``inbound`` -> ``mailbox`` ->
``worker`` -> ``turn``; every Redis key is in ``keys``; every setting is in ``settings``.
"""
