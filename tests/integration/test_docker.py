"""Dockerfile and docker-compose.yml, checked without a Docker engine: by parsing, and by running
the image's HEALTHCHECK command against a real router."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys

import yaml

from tests.support.deploy_contract import (
    CONTRACT_CMD,
    gunicorn_default,
    referenced_variables,
    variables_the_router_reads,
)
from tests.support.processes import ROOT, free_port


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuations joined and comments dropped, as docker reads it."""
    instructions, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.strip().startswith("#") or (not line.strip() and pending):
            continue  # docker drops comment lines, even inside a continued instruction
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            word, _, arguments = pending.strip().partition(" ")
            instructions.append((word.upper(), arguments.strip()))
        pending = ""
    return instructions


def arguments(name: str) -> list[str]:
    return [args for word, args in dockerfile() if word == name]


def dockerignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


def test_dockerfile_copies_only_what_exists_and_is_not_ignored():
    sources = []
    for args in arguments("COPY"):
        assert not args.startswith("--from"), "a single-stage build copies from the context only"
        sources.extend(args.split()[:-1])
    assert {"requirements.txt", "app", "configs", "wsgi.py", "gunicorn.conf.py"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source), source
    # ...and never a key: the real credentials file stays out of the build context.
    assert dockerignored("configs/credentials.json")


def test_dockerfile_runs_the_contract_command_as_a_non_root_user():
    [cmd] = arguments("CMD")
    assert json.loads(cmd) == CONTRACT_CMD
    [user] = arguments("USER")
    assert user not in ("root", "0")
    words = [word for word, _ in dockerfile()]
    assert words.index("USER") < words.index("CMD")
    [expose] = arguments("EXPOSE")
    assert int(expose) == 8082  # the contract's PORT default
    env = " ".join(arguments("ENV"))
    assert "PORT=8082" in env
    assert "PROMETHEUS_MULTIPROC_DIR=/tmp/" in env  # writable by the non-root user (tmpfs in compose)


def test_dockerfile_uses_the_tested_python_and_pinned_requirements():
    [image_arg] = [args for args in arguments("ARG") if args.startswith("PYTHON_IMAGE=")]
    assert image_arg.startswith(f"PYTHON_IMAGE=python:{sys.version_info.major}.{sys.version_info.minor}-slim")
    assert arguments("FROM") == ["${PYTHON_IMAGE}"]
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][A-Za-z0-9.]*", line), f"not pinned: {line}"


def healthcheck_command() -> list[str]:
    [healthcheck] = arguments("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval" in options and "--timeout" in options
    argv = json.loads(command)
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def test_dockerfile_healthcheck_passes_on_a_serving_router_and_fails_without_one(router):
    command = healthcheck_command()
    environment = {**os.environ, "PORT": str(router.port)}
    assert subprocess.run(command, env=environment, capture_output=True, timeout=10).returncode == 0
    environment["PORT"] = str(free_port())
    assert subprocess.run(command, env=environment, capture_output=True, timeout=10).returncode != 0


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def known_variables() -> set[str]:
    """Every environment variable the router reads, or that its example credentials refer to."""
    example = (ROOT / "configs" / "credentials.json.example").read_text()
    return variables_the_router_reads() | referenced_variables(example)


def test_compose_runs_router_nginx_and_optional_redis_from_files_that_exist():
    services = compose()["services"]
    assert set(services) == {"router", "nginx", "redis"}

    router = services["router"]
    assert router["build"] == "."
    assert router.get("command") is None  # the image's CMD: the contract
    assert "./configs:/app/configs:ro" in router["volumes"]
    assert int(router["stop_grace_period"].rstrip("s")) > gunicorn_default("GRACEFUL_TIMEOUT")
    assert router["read_only"] is True and "/tmp" in router["tmpfs"]
    for name, value in router["environment"].items():
        assert name in known_variables(), f"the router reads no variable {name}"
        if name.endswith(("_KEY", "_KEYS")):
            assert re.fullmatch(r"\$\{[A-Z_]+:?-?\}", value), f"{name}: secrets come from the environment"

    nginx = services["nginx"]
    [mount] = nginx["volumes"]
    source, target, mode = mount.split(":")
    assert (ROOT / source).is_file() and target == "/etc/nginx/conf.d/default.conf" and mode == "ro"
    assert nginx["depends_on"]["router"]["condition"] == "service_healthy"
    # nginx's upstream names the compose service and the router's port.
    assert re.search(r"^\s*server router:8082;", (ROOT / source).read_text(), flags=re.MULTILINE)

    assert services["redis"]["profiles"] == ["redis"]
