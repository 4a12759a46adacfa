"""eqdeq."""
