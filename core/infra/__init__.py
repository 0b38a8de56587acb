"""Plumbing every layer may use: the asyncio bridge, retries, record signing, the clock."""
