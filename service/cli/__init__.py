"""The ``parley`` command (``commands``) and its terminal chat; no logic of Parley's own lives here."""
