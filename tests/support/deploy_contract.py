"""What every deploy file must agree with: the start command, and the variables the router reads.

The variable names come from the code rather than the README, so a deploy file that sets a variable the
code stopped reading (or never read: a typo) fails a test. app/settings.py reads every app
setting and server setting (and app/server/hooks.py the metrics directory), each by a quoted literal name; the other
names the router reads are patterns (``<VENDOR>_BASE_URL``) or named by the credentials file
(``${OPENAI_API_KEY}``), so callers add those from the files they deploy.
"""

from __future__ import annotations

import re

from tests.support.processes import ROOT

# How the router is started everywhere: make run, the Docker image, Kubernetes, the tests.
CONTRACT_CMD = ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]

# PROMETHEUS_MULTIPROC_DIR is read by the server hooks (and by prometheus_client itself).
_SOURCES = (ROOT / "app" / "settings.py", ROOT / "app" / "server" / "hooks.py")


def variables_the_router_reads() -> set[str]:
    """Every upper-case quoted name in the files that read the environment (a superset: fine for a check)."""
    text = "".join(path.read_text() for path in _SOURCES)
    return set(re.findall(r"""["']([A-Z][A-Z0-9_]{2,})["']""", text))


def referenced_variables(credentials_text: str) -> set[str]:
    """The ``${NAME}`` references in a credentials.json, which the router fills from the environment."""
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", credentials_text))


def gunicorn_default(name: str) -> int:
    """The default of an integer server setting, e.g. GRACEFUL_TIMEOUT -> 120."""
    from app.settings import ServerSettings

    attribute = {"PORT": "port", "GRACEFUL_TIMEOUT": "graceful_timeout", "KEEPALIVE": "keepalive"}[name]
    return getattr(ServerSettings, attribute)
