"""``make demo``: the router with the FAKE vendor standing in for OpenAI and Gemini.

Every README example (chat, streaming, tools, ?vendor=) works offline and without keys. Nothing
is sent to a real vendor. This is a demo, never the default: ``make run`` uses configs/*.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.processes import BIN, ROOT, FakeVendorProcess

BANNER = """
==============================================================================
  DEMO MODE - a FAKE vendor answers in place of OpenAI and Gemini.
  No keys are needed and nothing leaves this machine. Answers are canned.
  Router: http://localhost:{port}    (try the curl examples in README.md)
  For the real thing: configs/credentials.json + `make run`.
==============================================================================
"""


def main() -> int:
    port = os.environ.get("PORT", "8082")
    fake = FakeVendorProcess()
    directory = Path(tempfile.mkdtemp(prefix="router-demo-"))
    credentials = directory / "credentials.json"
    credentials.write_text(
        json.dumps(
            [
                {"platform": "openai", "type": "api-key", "value": "demo-openai-key"},
                {"platform": "gemini", "type": "api-key", "value": "demo-gemini-key"},
            ]
        )
    )
    env = {
        **os.environ,
        "PORT": port,
        "CREDENTIALS_FILE": str(credentials),
        "OPENAI_BASE_URL": fake.url("openai"),
        "GEMINI_BASE_URL": fake.url("gemini") + "/v1beta/openai",
    }
    print(BANNER.format(port=port), flush=True)
    router = subprocess.Popen([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT, env=env)
    try:
        return router.wait()
    except KeyboardInterrupt:
        router.send_signal(signal.SIGTERM)
        return router.wait()
    finally:
        fake.stop()


if __name__ == "__main__":
    sys.exit(main())
