"""`make demo` (`python -m tests.demo`): the router with the fake vendor in place of OpenAI and Gemini; see __main__.py."""
