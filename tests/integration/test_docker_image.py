"""The Docker image, built from the real Dockerfile with podman and run from the image's own
filesystem, CMD, USER and Env (tests/support/container_image.py says how, without a container runtime)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from tests.support import container_image
from tests.support.container_image import ImageConfig
from tests.support.deploy_contract import CONTRACT_CMD
from tests.support.keys import OPENAI_KEY
from tests.support.processes import ROOT, FakeVendorProcess, free_port, terminate, wait_until

# The first run builds the base with debootstrap (~1 min) and installs the requirements.
pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(container_image.missing_tools() is not None, reason=str(container_image.missing_tools())),
]

TAG = "localhost/generative-api-router-test:latest"


@dataclass
class Served:
    """The router running from the image: its gunicorn master, its port, its output."""

    process: subprocess.Popen
    port: int
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def image() -> str:
    return container_image.build_image(TAG)


@pytest.fixture(scope="module")
def config(image: str) -> ImageConfig:
    return container_image.image_config(image)


@pytest.fixture(scope="module")
def root(image: str) -> Iterator[Path]:
    with container_image.mounted(image) as path:
        yield path


@pytest.fixture(scope="module")
def configs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What an operator mounts at /app/configs: the key only as a ${VAR} reference."""
    directory = tmp_path_factory.mktemp("configs")
    (directory / "models.json").write_text(json.dumps([{"vendor": "openai", "model": "gpt-4o"}]))
    credentials = [{"platform": "openai", "type": "api-key", "value": "${OPENAI_API_KEY}"}]
    (directory / "credentials.json").write_text(json.dumps(credentials))
    # The image's user is not the owner of the test's temporary files.
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)
    return directory


@contextlib.contextmanager
def serve(
    root: Path, config: ImageConfig, configs_dir: Path, fake: FakeVendorProcess, user: str | None = None
) -> Iterator[Served]:
    port = free_port()
    env = {
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "OPENAI_BASE_URL": fake.url("openai"),
        "OPENAI_API_KEY": OPENAI_KEY,
    }
    log = configs_dir.parent / f"router-{port}.log"
    with open(log, "wb") as output:
        process = container_image.start_in_image(
            root,
            config,
            config.cmd,
            env,
            user=user,
            binds={"/app/configs": configs_dir},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    served = Served(process, port, log)
    try:
        wait_until(lambda: _healthy(served), timeout=60, message="the router in the image answering /health")
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)  # gunicorn's quick shutdown
        terminate(process, grace=10)


def _healthy(served: Served) -> bool:
    if served.process.poll() is not None:
        raise RuntimeError(
            f"the router in the image exited {served.process.returncode}:\n{served.log.read_text()[-4000:]}"
        )
    try:
        return requests.get(served.url("/health"), timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def router(root: Path, config: ImageConfig, configs_dir: Path, fake_vendor: FakeVendorProcess) -> Iterator[Served]:
    with serve(root, config, configs_dir, fake_vendor) as served:
        yield served


def passwd_ids(root: Path, user: str) -> tuple[int, int]:
    """(uid, gid) of ``user`` (a name or a number) in the image's /etc/passwd."""
    for line in (root / "etc" / "passwd").read_text().splitlines():
        name, _, uid, gid, *_ = line.split(":")
        if user in (name, uid):
            return int(uid), int(gid)
    raise LookupError(f"no user {user} in the image")


def process_ids(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(status.split("\nUid:")[1].split()[0])
    gid = int(status.split("\nGid:")[1].split()[0])
    return uid, gid


def test_image_keeps_the_contract_command_a_non_root_user_and_the_healthcheck(config: ImageConfig, root: Path):
    assert config.cmd == CONTRACT_CMD
    assert config.workdir == "/app"
    uid, _ = passwd_ids(root, config.user.split(":")[0])
    assert uid != 0
    # Only the docker format keeps a HEALTHCHECK: it must have survived the build.
    assert config.healthcheck[0] == "CMD" and config.healthcheck[1] == "python"
    # Keys never enter the image.
    assert not (root / "app" / "configs" / "credentials.json").exists()


def test_image_runs_the_router_as_its_user_on_a_read_only_root(router: Served, config: ImageConfig, root: Path):
    assert process_ids(router.process.pid) == passwd_ids(root, config.user.split(":")[0])
    # The whole image is mounted read-only: the router writes nothing but /tmp (its metric files).
    assert os.statvfs(root).f_flag & os.ST_RDONLY
    log = router.log.read_text()
    # gunicorn's gevent worker, as the router's subclass that answers malformed requests in JSON.
    assert "Using worker: " in log and "RouterWorker" in log


def test_image_serves_health_and_a_chat_through_the_vendor_with_the_key_from_the_environment(
    router: Served, fake: FakeVendorProcess
):
    health = requests.get(router.url("/health"), timeout=10)
    assert (health.status_code, health.text) == (200, "OK")
    body = {"model": "any-model", "messages": [{"role": "user", "content": "from the image"}]}
    answer = requests.post(router.url("/v1/chat/completions"), json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert "You said: from the image" in answer.json()["choices"][0]["message"]["content"]
    [received] = fake.requests("openai")
    # credentials.json said ${OPENAI_API_KEY}; the value came from the environment.
    assert received["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert OPENAI_KEY not in router.log.read_text()


def run_healthcheck(root: Path, config: ImageConfig, router: Served, port: int) -> int:
    """The image's HEALTHCHECK command, run inside the router's mount namespace as docker would."""
    kind, *argv = config.healthcheck
    command = argv if kind == "CMD" else ["/bin/sh", "-c", argv[0]]
    check = container_image.start_in_image(
        root,
        config,
        command,
        {"PORT": str(port)},
        join=router.process.pid,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return check.wait(30)


def test_image_healthcheck_passes_on_the_running_router_and_fails_on_a_closed_port(
    router: Served, config: ImageConfig, root: Path
):
    assert run_healthcheck(root, config, router, router.port) == 0
    assert run_healthcheck(root, config, router, free_port()) != 0


def test_image_serves_as_the_uid_the_kubernetes_deployment_sets(
    root: Path, config: ImageConfig, configs_dir: Path, fake: FakeVendorProcess
):
    deployment = yaml.safe_load((ROOT / "configs" / "kubernetes" / "deployment.yaml").read_text())
    context = deployment["spec"]["template"]["spec"]["securityContext"]
    user = f"{context['runAsUser']}:{context['runAsGroup']}"
    # That uid is in no passwd file: the image's files must be readable by anyone.
    with serve(root, config, configs_dir, fake, user=user) as served:
        assert process_ids(served.process.pid) == (context["runAsUser"], context["runAsGroup"])
        body = {"model": "any-model", "messages": [{"role": "user", "content": "as uid"}]}
        assert requests.post(served.url("/v1/chat/completions"), json=body, timeout=30).status_code == 200
