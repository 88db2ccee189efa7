"""Generative API Router: one OpenAI-compatible endpoint in front of many LLM vendors.

Importing the package imports nothing else: ``create_app`` lives in ``app.application``, so the
gunicorn master can read settings and load the worker class without pulling in Flask.
"""
