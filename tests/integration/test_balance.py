"""Connections spread evenly over gunicorn's workers (app/server/balance.py), over real sockets.

Which worker holds a connection is read from /proc: the socket inodes each worker has open,
matched with the kernel's table of established TCP connections on the router's port.
"""

from __future__ import annotations

import http.client
import os
import signal
import time
from collections import Counter
from pathlib import Path

from tests.support.processes import RouterProcess, wait_until
from tests.support.prometheus import children

_ESTABLISHED = "01"


def held_by_worker(router: RouterProcess) -> Counter[int]:
    """Established connections on the router's port, by the pid of the worker holding them."""
    inodes = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == router.port and fields[3] == _ESTABLISHED:
                inodes[fields[9]] = True
    held: Counter[int] = Counter()
    for pid in children(router.process.pid):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held[pid] += 1
    return held


def serving(router: RouterProcess, workers: int) -> None:
    """Wait until every worker has loaded the app (each logs its catalog once) and accepts."""
    wait_until(lambda: router.logs().count("router: shares of chat") >= workers, timeout=20, message="workers up")
    time.sleep(0.2)


def ask(connection: http.client.HTTPConnection) -> str:
    """GET /health on a kept-alive connection (reopened by http.client if the router closed it);
    the answer's Connection header."""
    connection.request("GET", "/health")
    response = connection.getresponse()
    response.read()
    assert response.status == 200
    return (response.getheader("Connection") or "").lower()


def test_a_burst_of_connections_is_split_evenly_between_the_workers(start_router):
    router = start_router(workers=2)
    serving(router, 2)
    connections = [http.client.HTTPConnection("127.0.0.1", router.port, timeout=10) for _ in range(12)]
    for connection in connections:
        connection.connect()
    for connection in connections:
        assert ask(connection) != "close"

    held = held_by_worker(router)
    assert sorted(held.values()) == [6, 6], held
    for connection in connections:
        connection.close()


def test_a_busier_worker_waits_bounded_then_hands_connections_back_by_closing_them(start_router):
    router = start_router(workers=2, BALANCE_ACCEPT_WAIT="0.2")
    serving(router, 2)
    stopped = min(children(router.process.pid))
    connections = [http.client.HTTPConnection("127.0.0.1", router.port, timeout=10) for _ in range(6)]
    os.kill(stopped, signal.SIGSTOP)
    try:
        # The stopped worker holds fewer connections but cannot accept: the other one leaves each
        # new connection to it for BALANCE_ACCEPT_WAIT at most, then takes it.
        for connection in connections:
            started = time.monotonic()
            assert ask(connection) != "close"
            assert time.monotonic() - started < 2
        # Nor does it close connections for a sibling that is not accepting.
        assert "close" not in [ask(connection) for connection in connections]
        assert sorted(held_by_worker(router).values()) == [6]
    finally:
        os.kill(stopped, signal.SIGCONT)

    # Once the other accepts again (and a second has passed), the busier worker closes a kept-alive
    # connection after its answer (at most one every 50 ms), and the client's new connection goes
    # to the other, until they are even.
    closed = 0
    for _ in range(40):
        for connection in connections:
            closed += ask(connection) == "close"
        time.sleep(0.06)
        if sorted(held_by_worker(router).values()) == [3, 3]:
            break
    assert sorted(held_by_worker(router).values()) == [3, 3], held_by_worker(router)
    assert 3 <= closed <= 6
    for connection in connections:
        connection.close()


def test_without_balancing_a_worker_never_closes_a_connection_to_rebalance(start_router):
    router = start_router(workers=2, BALANCE_CONNECTIONS="false")
    connections = [http.client.HTTPConnection("127.0.0.1", router.port, timeout=10) for _ in range(6)]
    answers = [ask(connection) for _ in range(5) for connection in connections]
    assert "close" not in answers
    for connection in connections:
        connection.close()
