"""Messaging rules: GSM-7 segments, carrier keywords, per-number limits and countries, opt-outs."""
