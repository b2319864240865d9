"""Between scrapes: one cheap sample of a target's slots (or PgBouncer's clients) every
second, on the target's held connection, kept as peaks and time at saturation. Pure: the core
runs the statements and feeds the rows (docs/architecture.md, "The sampler")."""
