"""The conversation engine: the queue (mailbox, wake-ups, locks), workers, turns, outreach, inactivity, sending."""
