"""The REST API (Retell's paths and envelope): one module per thing served, listed in ``routes``."""
