"""`make demo`, i.e. `python -m tests.demo`: the router with the fake vendor standing in (__main__.py)."""
