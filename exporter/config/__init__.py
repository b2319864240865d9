"""The configuration: the operator's files read safely, validated into one typed model; every
problem one ConfigError."""
