"""pgqueue: a PostgreSQL-native job queue for Python."""

__version__ = "0.1.0"
