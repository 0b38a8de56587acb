"""The Redis metadata store: the store, its Lua script and its change feed."""
