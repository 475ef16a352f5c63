"""visionjobs: exactly-once job completion for a Kafka vision pipeline."""

__version__ = "0.1.0"
