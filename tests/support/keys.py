"""The one set of vendor keys the tests configure, unit and integration alike.

Long enough to be registered as secrets, unique enough to grep logs and bodies for.
"""

from __future__ import annotations

OPENAI_KEY = "sk-test-openai-0123456789abcdef"
GEMINI_KEY = "AIzaTestGemini0123456789abcd"

# One OpenAI and one Gemini credential: what a test config holds unless it says otherwise.
DEFAULT_CREDENTIALS = [
    {"platform": "openai", "type": "api-key", "value": OPENAI_KEY},
    {"platform": "gemini", "type": "api-key", "value": GEMINI_KEY},
]
