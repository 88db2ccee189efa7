"""Support code for the tests: the fake vendor, real processes (router, nginx, redis, Prometheus), keys and helpers.

Nothing here is collected as a test; test files import from here, never from each other.
"""
