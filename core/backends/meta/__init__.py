"""Metadata stores: the MetaStore protocol, SQLite and Redis."""
