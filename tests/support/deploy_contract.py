"""What every deploy file must agree with: the start command, and the variables the router reads.

The variable names come from the code rather than the README, so a deploy file that sets a variable the
code stopped reading (or never read: a typo) fails a test. app/settings.py reads every app
setting and gunicorn.conf.py every server setting, each by a quoted literal name; the other
names the router reads are patterns (``<VENDOR>_BASE_URL``) or named by the credentials file
(``${OPENAI_API_KEY}``), so callers add those from the files they deploy.
"""

from __future__ import annotations

import re

from tests.support.processes import ROOT

# How the router is started everywhere: make run, the Docker image, Kubernetes, the tests.
CONTRACT_CMD = ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]

_SOURCES = (ROOT / "app" / "settings.py", ROOT / "gunicorn.conf.py")


def variables_the_router_reads() -> set[str]:
    """Every upper-case quoted name in the files that read the environment (a superset: fine for a check)."""
    text = "".join(path.read_text() for path in _SOURCES)
    return set(re.findall(r"""["']([A-Z][A-Z0-9_]{2,})["']""", text))


def referenced_variables(credentials_text: str) -> set[str]:
    """The ``${NAME}`` references in a credentials.json, which the router fills from the environment."""
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", credentials_text))


def gunicorn_default(name: str) -> int:
    """The default gunicorn.conf.py gives an integer setting, e.g. GRACEFUL_TIMEOUT -> 120."""
    [value] = re.findall(rf"""_int\(["']{name}["'], (\d+)""", (ROOT / "gunicorn.conf.py").read_text())
    return int(value)
