"""Twilio, the provider behind SMS and WhatsApp: its two webhooks, their signatures, and the REST gateway."""
