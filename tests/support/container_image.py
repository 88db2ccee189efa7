"""The Docker image, built with podman and run without a container runtime, for tests.

These machines have no Docker engine, no reachable image registry, and no OCI runtime that can
start a container (crun cannot set cgroups or rlimits here). podman can still build and mount
images, so:

- the official Python base is stood in for by a Debian bookworm root made with debootstrap
  (python3, venv, pip, CA certificates), given this machine's CA bundle and pip index settings so
  pip inside the build reaches the package index the way the host's pip does;
- the real Dockerfile is built on it (``--isolation chroot --format docker``);
- the image's own CMD runs as its own USER by ``chroot`` into the mounted, read-only image, in a
  private mount namespace that holds the /proc, /dev, /tmp and configs mounts, so they vanish
  with the process whatever happens to the test.

The slow part (debootstrap, ~40 s) is cached under BASE_CACHE; the base image and podman's layer
cache persist in podman's store, so a later run only rebuilds what changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import ROOT

# Outside the work tree and the temporary directory, so a fresh clone (CI) reuses it.
BASE_CACHE = Path("/var/cache/router-test-base")
BASE_REPOSITORY = "localhost/router-test-python-base"
SUITE = "bookworm"
# What python:3.11-slim-bookworm offers a Dockerfile: python, pip, venv, CA certificates.
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
# The official image's PATH; a runtime would apply the same default to an image without one.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# pip settings worth carrying into the build; local paths (file:// indexes, find-links) are not
# reachable from inside it.
_PIP_KEYS = ("index-url", "extra-index-url", "trusted-host", "default-timeout", "timeout", "retries", "proxy")


def missing_tools() -> str | None:
    """Why the image cannot be built and run here, or None when it can."""
    for tool in ("podman", "debootstrap", "unshare", "nsenter", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs podman, buildah and debootstrap)"
    if os.geteuid() != 0:
        return "building the base with debootstrap and mounting the image need root"
    return None


def debian_mirror(sources: Sequence[Path] = ()) -> str:
    """The Debian mirror the host's apt uses for the main suite (debootstrap needs the same one)."""
    files = sources or [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix == ".sources":  # deb822: paragraphs of "Field: value"
            for paragraph in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", paragraph, flags=re.MULTILINE))
                if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    raise RuntimeError(f"no Debian {SUITE} mirror in the host's apt sources: debootstrap needs one")


def host_pip_conf() -> str:
    """A pip.conf for the build: the host's CA bundle, plus the host's remote index settings."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    settings: dict[str, str] = {}
    for scope, key, value in re.findall(r"^([^.\s]*)\.([a-z-]+)='(.*)'$", listing, flags=re.MULTILINE):
        if key in _PIP_KEYS and scope in ("global", "install", ":env:"):
            if key.endswith("index-url"):
                value = " ".join(url for url in value.split() if url.startswith(("http://", "https://")))
            if value:
                settings[key] = value
    lines = ["[global]", "cert = /etc/ssl/certs/ca-certificates.crt"]
    lines += [f"{key} = {value}" for key, value in sorted(settings.items())]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One builder at a time: two test runs must not debootstrap or tag into each other."""
    BASE_CACHE.mkdir(parents=True, exist_ok=True)
    with open(BASE_CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(argv: Sequence[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(argv)} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result


def _image_exists(reference: str) -> bool:
    return subprocess.run(["podman", "image", "exists", reference], capture_output=True).returncode == 0


def _debootstrapped() -> Path:
    """A cached bookworm root with the base packages, made once per package list."""
    key = hashlib.sha256(" ".join((SUITE, *BASE_PACKAGES)).encode()).hexdigest()[:12]
    root = BASE_CACHE / f"{SUITE}-{key}"
    if root.is_dir():
        return root
    partial = BASE_CACHE / f"{root.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            str(partial),
            debian_mirror(),
        ],
        timeout=600,
    )
    partial.rename(root)  # only a complete root ever has the final name
    return root


def base_image() -> str:
    """The stand-in for python:3.11-slim-bookworm in podman's store; built only when its inputs change."""
    pip_conf = host_pip_conf()
    # This file is part of the key: a change to the recipe below makes a new base.
    recipe = hashlib.sha256(Path(__file__).read_bytes() + HOST_CA_BUNDLE.read_bytes() + pip_conf.encode())
    reference = f"{BASE_REPOSITORY}:{recipe.hexdigest()[:12]}"
    if _image_exists(reference):
        return reference
    root = _debootstrapped()
    # As in the official image: `python` on the PATH, and pip may install into the system Python.
    python = root / "usr/local/bin/python"
    python.unlink(missing_ok=True)
    python.symlink_to("/usr/bin/python3")
    for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    # The host's bundle: it holds whatever CA the machine's route to the package index needs.
    shutil.copyfile(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
    (root / "etc/pip.conf").write_text(pip_conf)
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    try:
        _run(
            [
                "podman",
                "import",
                "--change",
                f"ENV PATH={DEFAULT_PATH}",
                "--change",
                "ENV LANG=C.UTF-8",
                "-",
                reference,
            ],
            timeout=300,
            stdin=tar.stdout,
        )
    finally:
        tar.stdout.close()
        tar.wait(60)
    return reference


def build_image(tag: str) -> str:
    """Build the project's Dockerfile on the stand-in base as ``tag``; return the image id."""
    with _locked():
        base = base_image()
        previous = _image_id(tag)
        _run(
            [
                "podman",
                "build",
                "--isolation",
                "chroot",
                "--format",
                "docker",  # the OCI format has no HEALTHCHECK: podman would drop it
                "--build-arg",
                f"PYTHON_IMAGE={base}",
                "--tag",
                tag,
                str(ROOT),
            ],
            timeout=600,
        )
        image = _image_id(tag)
        if previous and previous != image:  # last run's image: nothing else uses it
            subprocess.run(["podman", "rmi", previous], capture_output=True)
        for stale in _tags(BASE_REPOSITORY) - {base}:
            subprocess.run(["podman", "rmi", stale], capture_output=True)
    return image


def _image_id(reference: str) -> str | None:
    result = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", reference], capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 else None


def _tags(repository: str) -> set[str]:
    listing = _run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", repository], timeout=60).stdout
    return set(listing.split())


@dataclass(frozen=True)
class ImageConfig:
    """What a container runtime would take from the image to start it."""

    user: str
    env: dict[str, str]
    cmd: list[str]
    workdir: str
    healthcheck: list[str]


def image_config(image: str) -> ImageConfig:
    config = _run(["podman", "image", "inspect", "--format", "{{json .Config}}", image], timeout=60).stdout
    health = _run(["podman", "image", "inspect", "--format", "{{json .HealthCheck}}", image], timeout=60).stdout
    config_json, health_json = json.loads(config), json.loads(health)
    env = dict(item.split("=", 1) for item in config_json.get("Env") or [])
    env.setdefault("PATH", DEFAULT_PATH)
    return ImageConfig(
        user=config_json.get("User") or "root",
        env=env,
        cmd=config_json.get("Cmd") or [],
        workdir=config_json.get("WorkingDir") or "/",
        healthcheck=(health_json or {}).get("Test") or [],
    )


@contextlib.contextmanager
def mounted(image: str) -> Iterator[Path]:
    """The image's root filesystem, read-only, for as long as the block runs."""
    root = Path(_run(["podman", "image", "mount", image], timeout=60).stdout.strip())
    try:
        yield root
    finally:
        subprocess.run(["podman", "image", "unmount", image], capture_output=True, timeout=60)


def start_in_image(
    root: Path,
    config: ImageConfig,
    argv: Sequence[str],
    env: Mapping[str, str],
    user: str | None = None,
    binds: Mapping[str, Path] | None = None,
    join: int | None = None,
    **popen: object,
) -> subprocess.Popen:
    """Start ``argv`` in the mounted image as a runtime would: its user, its Env (+ ``env``), its WORKDIR.

    A new private mount namespace gets /proc, /dev, a tmpfs /tmp and ``binds`` (image path ->
    host directory, read-only) under ``root``; they disappear when the process ends. ``join``: run
    inside the mount namespace of that running process instead, like ``docker exec``.
    """
    environment = [f"{key}={value}" for key, value in {**config.env, **env}.items()]
    inside = ["sh", "-c", 'cd "$0" && exec "$@"', config.workdir, *argv]
    chroot = ["chroot", f"--userspec={user or config.user}", str(root), "env", "-i", *environment, *inside]
    if join is not None:
        return subprocess.Popen(["nsenter", f"--target={join}", "--mount", "--", *chroot], **popen)
    mounts = [
        f"mount --bind /proc {shlex.quote(str(root / 'proc'))}",
        f"mount --rbind /dev {shlex.quote(str(root / 'dev'))}",
        f"mount -t tmpfs -o mode=1777 tmpfs {shlex.quote(str(root / 'tmp'))}",
        *(
            f"mount --bind -o ro {shlex.quote(str(source))} {shlex.quote(str(root / target.lstrip('/')))}"
            for target, source in (binds or {}).items()
        ),
    ]
    script = " && ".join(mounts) + ' && exec "$@"'
    # Every exec replaces its process, so the Popen's pid ends up being argv[0] itself.
    return subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", *chroot], **popen
    )
