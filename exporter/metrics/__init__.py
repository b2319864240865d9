"""Metrics: a scrape's results as metric families, and the families as exposition text."""
