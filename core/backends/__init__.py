"""Storage backends: each protocol (base.py) with its implementations, chosen by name (registry.py)."""
