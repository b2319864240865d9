"""The PostgreSQL layer: the one held connection per target, the statements on it, why a connect
attempt failed, DSNs without secrets."""
