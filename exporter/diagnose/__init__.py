"""Diagnosis of who holds the connection slots: the analysis, its text rendering, and the
`diagnose` command."""
