"""pg-connections-exporter: PostgreSQL connection saturation for Prometheus."""

__version__ = "0.1.0"
