"""marker-ingest: turns marker-text news feeds on Kafka into article events and dead letters."""

__version__ = "0.1.0"
