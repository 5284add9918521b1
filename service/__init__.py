"""Parley: a self-hosted runtime for two-way SMS chat agents, compatible with Retell AI's chat API.

Start at ``app.create_app`` (the one composition root). The inbound path is ``channels.twilio.messages``
-> ``conversations.queue`` -> ``conversations.worker`` -> ``conversations.turn``; every Redis key is in
``storage.keys``; every setting is in ``settings``. docs/architecture.md draws the rest.
"""
