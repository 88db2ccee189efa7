"""What gunicorn runs besides the app: the worker class, its JSON logger, and the server hooks.

Imported by gunicorn.conf.py in the gunicorn master, before any worker forks: nothing here may
import Flask, requests or the rest of the app at module level (a worker imports them after
gevent's monkey-patching; the master never should).
"""
