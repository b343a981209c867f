"""``msgin5g demo``: the whole story on one machine, on embedded SQLite."""
