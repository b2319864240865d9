"""Scraping: one target's queries within a deadline, every target's under one, result rows to
samples, the login check."""
