"""The cache benchmark (``python -m tests.bench --cache``): agent sessions through one model's keys.

Agents resend a long, growing prefix every turn, and vendors cache prefixes per key. Here the
bench vendor (tests/bench/vendor.py ``--prefix-cache``) emulates that cache per credential, and
``--cache-sessions`` sessions (50) of ``--cache-turns`` turns (10) each go through the router to
``--cache-keys`` credentials (4) of one model, ``--cache-concurrency`` sessions (10) at a time,
each session's turns in order. A session's prompt is a system prompt shared by every session
(``--cache-shared-kb``, 40 KB, like an agent's instructions and tools), then its own context
(``--cache-own-kb``, 10 KB: its project), then its turns so far, each turn adding a user message
and the vendor's answer; every call names its session (``X-Session-Id``).

Two runs, each with a fresh vendor (empty caches) and router: affinity on (the default) and
``AFFINITY=off``. Reported per run: the cache hit ratio (cached / input tokens, from the usage
the client received, checked against the router's ``router_tokens_total``), the share of calls
after a session's first whose key differs from its previous turn's (from the access lines), and
the router's CPU per call; then the selector's own time per choice, with and without a session, measured in this
process (``rendezvous`` over the candidates vs the weighted random draw).
"""

from __future__ import annotations

import argparse
import json
import random
import time
import timeit
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from tests.bench.procs import cpu_between, sample_tree
from tests.bench.servers import HOST, LeanVendor
from tests.support.processes import RouterProcess, router_config, wait_until
from tests.support.prometheus import scrape

__all__ = ["run_cache", "table"]

VENDOR, MODEL = "openai", "gpt-4o"
ROUTER_PATH = "/v1/chat/completions"
BLOCK_TOKENS = 128  # OpenAI caches in 128-token increments


def run_cache(args: argparse.Namespace, workdir: Path, say: Any) -> dict[str, Any]:
    """Both runs (affinity on, off), then the selector's cost per choice."""
    result: dict[str, Any] = {
        "sessions": args.cache_sessions,
        "turns": args.cache_turns,
        "keys": args.cache_keys,
        "concurrency": args.cache_concurrency,
        "shared_kb": args.cache_shared_kb,
        "own_kb": args.cache_own_kb,
        "block_tokens": BLOCK_TOKENS,
        "workers": args.workers,
        "runs": {},
    }
    for name, env in (("on", {}), ("off", {"AFFINITY": "off"})):
        say(f"cache run, affinity {name}: {args.cache_sessions} sessions x {args.cache_turns} turns")
        run_dir = workdir / f"cache-{name}"
        run_dir.mkdir()
        result["runs"][name] = _one_run(args, run_dir, env)
        run = result["runs"][name]
        say(
            f"  hit ratio {run['hit_ratio']:.1%}, key changes {run['key_changes']:.1%}, "
            f"router CPU {run['cpu_ms_per_call']:.2f} ms/call"
        )
    result["selector"] = selector_cost(args.cache_keys)
    return result


def _one_run(args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    vendor = LeanVendor(prefix_cache=BLOCK_TOKENS)
    router: RouterProcess | None = None
    try:
        keys = [f"sk-bench-cache-{n}-0123456789abcdef" for n in range(args.cache_keys)]
        router_env = router_config(
            workdir / "config",
            vendor,  # type: ignore[arg-type]  # router_config only calls .url()
            models=[{"vendor": VENDOR, "model": MODEL}],
            credentials=[{"platform": VENDOR, "type": "api-key", "value": key} for key in keys],
        )
        router_env.update(env, LOG_FORMAT="json", PROMETHEUS_MULTIPROC_DIR=str(workdir / "metrics"))
        (workdir / "metrics").mkdir()
        router = RouterProcess(router_env, workdir / "router.log", workers=args.workers)
        root = router.process.pid
        wait_until(lambda: len(sample_tree(root).cpu) > args.workers, timeout=30, message="router workers running")
        before = sample_tree(root)
        started = time.perf_counter()
        with ThreadPoolExecutor(args.cache_concurrency) as pool:
            sessions = list(pool.map(lambda n: _session(router.port, n, args), range(args.cache_sessions)))
        seconds = time.perf_counter() - started
        cpu = cpu_between(before, sample_tree(root))
        calls = [call for session in sessions for call in session]
        prompt = sum(call["prompt"] for call in calls)
        cached = sum(call["cached"] for call in calls)
        later = [call for session in sessions for call in session[1:]]
        metrics = scrape(router.base)
        router.stop()
        moves = _key_changes(router.log_path)
        return {
            "calls": len(calls),
            "seconds": round(seconds, 2),
            "input_tokens": prompt,
            "cached_tokens": cached,
            "hit_ratio": cached / prompt if prompt else 0.0,
            "hit_ratio_after_first_turn": sum(c["cached"] for c in later) / max(sum(c["prompt"] for c in later), 1),
            "key_changes": moves / max(len(later), 1),
            "counted_input_tokens": metrics.value("router_tokens_total", kind="prompt"),
            "counted_cached_tokens": metrics.value("router_tokens_total", kind="cached_input"),
            "cpu_ms_per_call": round(cpu * 1000 / len(calls), 3),
            "mean_prompt_kb": round(sum(call["bytes"] for call in calls) / len(calls) / 1024, 1),
        }
    finally:
        if router is not None:
            router.stop()
        vendor.stop()


def _key_changes(log: Path) -> int:
    """Turns answered by another key than their session's previous turn, from the access lines
    (a session's turns are sequential, so its lines are in turn order)."""
    last: dict[str, str] = {}
    changes = 0
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        session, credential = entry.get("session"), entry.get("credential")
        if entry.get("logger") != "router.access" or session is None or credential is None:
            continue
        changes += session in last and last[session] != credential
        last[session] = credential
    return changes


def _session(port: int, number: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One agent session's turns, in order: what each call cost and whether its key moved."""
    rng = random.Random(number)
    shared = _text(random.Random(0), args.cache_shared_kb)  # the same for every session
    own = _text(rng, args.cache_own_kb)
    messages: list[dict[str, str]] = [{"role": "system", "content": shared + own}]
    url = f"http://{HOST}:{port}{ROUTER_PATH}"
    calls: list[dict[str, Any]] = []
    with requests.Session() as http:
        for turn in range(args.cache_turns):
            messages.append({"role": "user", "content": f"Turn {turn}: " + _text(rng, 1)})
            body = json.dumps({"model": "any-model", "messages": messages}).encode()
            response = http.post(
                url,
                data=body,
                headers={"Content-Type": "application/json", "X-Session-Id": f"bench-session-{number}"},
                timeout=60,
            )
            response.raise_for_status()
            answer = response.json()
            usage = answer["usage"]
            details = usage.get("prompt_tokens_details") or {}
            cached = details.get("cached_tokens", 0)
            calls.append({"prompt": usage["prompt_tokens"], "cached": cached, "bytes": len(body)})
            messages.append({"role": "assistant", "content": answer["choices"][0]["message"]["content"]})
    return calls


def _text(rng: random.Random, kilobytes: int) -> str:
    words = ("build", "test", "file", "edit", "run", "shell", "read", "write", "grep", "commit", "diff", "tool")
    out: list[str] = []
    size = 0
    while size < kilobytes * 1024:
        word = rng.choice(words)
        out.append(word)
        size += len(word) + 1
    return " ".join(out) + "\n"


def selector_cost(keys: int) -> dict[str, Any]:
    """The selector's time per choice: a random draw, and a session's rendezvous, over ``keys`` and 100."""
    from app.catalog import Combination, Credential, Model, Vendor
    from app.selector import Candidates, Selector

    figures: dict[str, Any] = {}
    sessions = [f"session-{n}" for n in range(1000)]
    for count in (keys, 100):
        vendor = Vendor(VENDOR, "http://vendor.test/v1")
        model = Model(VENDOR, MODEL)
        candidates = Candidates(
            Combination(vendor, Credential(VENDOR, f"{VENDOR}#{n + 1}", f"sk-{n:032d}"), model) for n in range(count)
        )
        selector = Selector(_catalog_stub(candidates), 30, 300)  # type: ignore[arg-type]
        figures[str(count)] = {
            "draw_us": _per_choice(lambda s, c=candidates, sel=selector: sel.choose(c), sessions),
            "session_us": _per_choice(lambda s, c=candidates, sel=selector: sel.choose(c, session=s), sessions),
        }
    return figures


def _per_choice(choose: Any, sessions: list[str]) -> float:
    """The best of 20 rounds of ``choose(session)`` over ``sessions``, in µs per choice."""
    best = min(timeit.repeat(lambda: [choose(s) for s in sessions], number=1, repeat=20))
    return round(best / len(sessions) * 1e6, 2)


def _catalog_stub(candidates: Any) -> Any:
    """The little of a Catalog the selector's constructor reads."""

    class Stub:
        aliases: dict[str, Any] = {}
        models = (candidates[0].model,)
        combinations = tuple(candidates)

    return Stub()


def table(result: dict[str, Any]) -> str:
    """The cache run's figures as a Markdown table."""
    lines = [
        f"{result['sessions']} sessions x {result['turns']} turns, {result['keys']} keys of one model, "
        f"{result['concurrency']} sessions at a time, prompt = {result['shared_kb']} KB shared + "
        f"{result['own_kb']} KB per session + turns; cache blocks of {result['block_tokens']} tokens",
        "",
        "| affinity | calls | cache hit ratio | after the first turn | key changes between turns "
        "| input tokens counted = received | router CPU ms/call | mean prompt KB |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, run in result["runs"].items():
        counted = (
            run["counted_input_tokens"] == run["input_tokens"] and run["counted_cached_tokens"] == run["cached_tokens"]
        )
        lines.append(
            f"| {name} | {run['calls']} | {run['hit_ratio']:.1%} | {run['hit_ratio_after_first_turn']:.1%} "
            f"| {run['key_changes']:.1%} | {'yes' if counted else 'NO'} | {run['cpu_ms_per_call']:.2f} "
            f"| {run['mean_prompt_kb']} |"
        )
    lines += ["", "| candidates | random draw µs/choice | session (rendezvous) µs/choice |", "|---:|---:|---:|"]
    for count, figures in result["selector"].items():
        lines.append(f"| {count} | {figures['draw_us']} | {figures['session_us']} |")
    return "\n".join(lines)
