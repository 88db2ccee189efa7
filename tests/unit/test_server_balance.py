"""The connection balance's rules (app/server/balance.py), on the shared table without gunicorn."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.server import balance
from app.settings import ServerSettings, SettingsError


@pytest.fixture
def siblings(monkeypatch):
    """Two worker slots; returns (this worker's Balance, a function setting the sibling's count)."""
    monkeypatch.setattr(balance, "_table", None)
    balance.create_table()
    mine = SimpleNamespace(balance_slot=balance.assign_slot([]))
    other = SimpleNamespace(balance_slot=balance.assign_slot([mine]))
    assert (mine.balance_slot, other.balance_slot) == (0, 1)
    worker = balance.Balance(mine.balance_slot, accept_wait=0.1)
    worker.serving(True)

    def sibling_holds(count: int) -> None:
        balance._table[other.balance_slot] = count

    return worker, sibling_holds


def hold(worker: balance.Balance, count: int) -> None:
    for _ in range(count):
        worker.opened()


def test_a_worker_alone_always_accepts_and_never_sheds(monkeypatch):
    monkeypatch.setattr(balance, "_table", None)
    balance.create_table()
    alone = balance.Balance(balance.assign_slot([]), accept_wait=0.1)
    alone.serving(True)
    hold(alone, 10)
    assert alone.accept_delay(waiting=5) == 0
    assert not alone.should_shed()


def test_a_burst_is_taken_up_to_this_workers_share(siblings):
    worker, sibling_holds = siblings
    sibling_holds(0)
    assert worker.accept_delay(waiting=12) == 0  # 0 of a share of 6
    hold(worker, 5)
    assert worker.accept_delay(waiting=7) == 0  # 5 of 6
    worker.opened()
    assert worker.accept_delay(waiting=6) > 0  # 6 of 6: the rest is the sibling's


def test_a_single_new_connection_goes_to_the_least_loaded(siblings):
    worker, sibling_holds = siblings
    hold(worker, 8)
    sibling_holds(7)
    assert worker.accept_delay(waiting=1) > 0
    sibling_holds(8)
    assert worker.accept_delay(waiting=1) == 0


def test_a_connection_left_to_a_sibling_is_taken_after_the_accept_wait(siblings, monkeypatch):
    worker, sibling_holds = siblings
    now = [1000.0]
    monkeypatch.setattr(balance.time, "monotonic", lambda: now[0])
    hold(worker, 3)
    sibling_holds(0)
    now[0] += 1
    assert worker.accept_delay(waiting=1) > 0
    now[0] += 0.05
    assert worker.accept_delay(waiting=1) > 0
    now[0] += 0.06
    assert worker.accept_delay(waiting=1) == 0
    # The sibling is not accepting: no connection is closed for it for a while.
    now[0] += 0.5
    assert not worker.should_shed()
    now[0] += 1.0
    assert worker.should_shed()


def test_a_worker_sheds_only_two_or_more_above_the_least_loaded_one_at_a_time(siblings, monkeypatch):
    worker, sibling_holds = siblings
    now = [1000.0]
    monkeypatch.setattr(balance.time, "monotonic", lambda: now[0])
    hold(worker, 9)
    sibling_holds(8)
    now[0] += 1
    assert not worker.should_shed()  # one above: balanced enough
    sibling_holds(7)
    assert not worker.should_shed()  # the table is looked at once every 50 ms
    now[0] += 0.06
    assert worker.should_shed()
    assert not worker.should_shed()  # and one connection closed at a time
    now[0] += 0.06
    assert worker.should_shed()
    worker.opened()  # a connection just accepted: the counts are still moving
    now[0] += 0.06
    assert not worker.should_shed()


def test_a_stopping_worker_does_not_count(siblings):
    worker, sibling_holds = siblings
    hold(worker, 4)
    sibling_holds(0)
    assert worker.accept_delay(waiting=1) > 0
    sibling_holds(-1)  # the sibling stopped accepting
    assert worker.accept_delay(waiting=1) == 0


def test_balance_settings_defaults_and_bad_values():
    server = ServerSettings.from_env({})
    assert (server.balance_connections, server.balance_accept_wait) == (True, 0.1)
    server = ServerSettings.from_env({"BALANCE_CONNECTIONS": "false", "BALANCE_ACCEPT_WAIT": "0.5"})
    assert (server.balance_connections, server.balance_accept_wait) == (False, 0.5)
    for name, value in (("BALANCE_CONNECTIONS", "maybe"), ("BALANCE_ACCEPT_WAIT", "-1")):
        with pytest.raises(SettingsError, match=name):
            ServerSettings.from_env({name: value})
