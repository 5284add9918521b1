"""The operator console at ``/console``: conversations live, takeover, the dev phone, agents and numbers, opt-outs
and the overview, as server-rendered pages (``routes.setup`` serves them; docs/architecture.md says more)."""
