"""Storage backends: each protocol (base.py) with its implementations."""
