"""Registries of open uploads: the protocol, memory, a local directory and Redis."""
