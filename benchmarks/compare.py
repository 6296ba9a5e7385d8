"""Clients side by side: geamqp, pika, aio-pika, py-amqp and a raw-socket floor.

    .venv/bin/python benchmarks/compare.py                 # full run (about 8 minutes)
    .venv/bin/python benchmarks/compare.py --quick         # smoke run, seconds
    .venv/bin/python benchmarks/compare.py --clients geamqp,raw --cases publish,rpc
    .venv/bin/python benchmarks/compare.py --output results.md

Every (case, client) runs `--repeat` times, each run in a fresh subprocess
that connects, then times only the work (wall clock, and the process's own
CPU time, user + sys, from getrusage). The table shows medians: messages (or
round trips) per second, client CPU microseconds per message, and geamqp's
CPU per message divided by the other client's (below 1: geamqp is cheaper).
The machine is shared and noisy: CPU per message is the stable figure.

Clients (drivers in benchmarks/_clients/):

  geamqp       blocking calls in a greenlet; consumer callbacks; Confirmation futures
  pika         pika.BlockingConnection
  pika-gevent  pika.adapters.gevent_connection.GeventConnection, callback style in the hub
  aio-pika     aio_pika.connect (robust off) on the default asyncio loop
  py-amqp      amqp.Connection, drain_events
  raw          a stdlib socket, hand-written handshake, pre-encoded frames

Cases (100-byte bodies, default exchange, one non-durable queue per run):

  publish        N publishes, no confirms; ends when a passive queue.declare
                 shows message_count == N
  confirm        N publishes with publisher confirms, WINDOW outstanding
  consume        queue pre-filled with N messages (by the raw client, untimed);
                 prefetch 1000, basic.ack of every message
  consume-multi  the same, basic.ack multiple=True every 100th message
  rpc            N sequential round trips: publish with reply_to = direct
                 reply-to; a consumer in the same process (same connection,
                 another channel) replies; p50/p99 of the round trip
  declare        N sequential passive queue.declare round trips

A client that cannot do a case is shown as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _clients import PROFILE_ENV, Meter, Unsupported  # noqa: E402
from _clients import raw as raw_client  # noqa: E402

DEFAULT_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
BODY = bytes(range(100))
WINDOW = 1000
PREFETCH = 1000
RUN_TIMEOUT = 120.0  # seconds for one subprocess

CLIENTS = {  # name -> module in _clients
    "geamqp": "geamqp_client",
    "pika": "pika_blocking",
    "pika-gevent": "pika_gevent",
    "aio-pika": "aiopika_client",
    "py-amqp": "pyamqp_client",
    "raw": "raw",
}


@dataclass(frozen=True)
class Case:
    name: str
    function: str  # the driver function
    n: int  # full run
    n_quick: int
    options: dict[str, Any] = field(default_factory=dict)
    prefill: bool = False
    unit: str = "msgs"


CASES = {case.name: case for case in (
    Case("publish", "publish", 50_000, 2_000, {"body": BODY}),
    Case("confirm", "confirm", 30_000, 2_000, {"body": BODY, "window": WINDOW}),
    Case("consume", "consume", 30_000, 2_000, {"prefetch": PREFETCH, "ack_every": 1},
         prefill=True),
    Case("consume-multi", "consume", 30_000, 2_000, {"prefetch": PREFETCH, "ack_every": 100},
         prefill=True),
    Case("rpc", "rpc", 2_000, 200, {"body": BODY}, unit="round trips"),
    Case("declare", "declare", 5_000, 500, {}, unit="round trips"),
)}


# --------------------------------------------------------------------------- one run (child)


def child(client: str, case_name: str, queue: str, n: int, url: str) -> int:
    """Run one case in this (fresh) process; print one JSON line on stdout."""
    case = CASES[case_name]
    try:
        module = importlib.import_module(f"_clients.{CLIENTS[client]}")
        meter = Meter()
        extra = getattr(module, case.function)(url, meter, queue, n, **case.options)
        result: dict[str, Any] = {"wall": meter.wall, "cpu": meter.cpu, **extra}
    except Unsupported as exc:
        result = {"skip": str(exc)}
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def run_one(client: str, case: Case, n: int, url: str,
            profile: str | None = None) -> dict[str, Any]:
    queue = f"bench-{case.name}-{client}-{uuid.uuid4().hex[:10]}"
    raw_client.admin(url, declare=(queue,))
    try:
        if case.prefill:
            raw_client.prefill(url, queue, n, BODY)
        command = [sys.executable, os.path.abspath(__file__), "--child", client, case.name,
                   queue, str(n), "--url", url]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
        if profile:
            env[PROFILE_ENV] = profile
        try:
            proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env,
                                  timeout=RUN_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {RUN_TIMEOUT:.0f} s"}
        lines = proc.stdout.strip().splitlines()
        try:
            return dict(json.loads(lines[-1]))
        except (IndexError, ValueError):
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return {"error": f"exit {proc.returncode}: {tail}"}
    finally:
        raw_client.admin(url, delete=(queue,))


# --------------------------------------------------------------------------- summary


@dataclass
class Summary:
    runs: int = 0
    rate: float | None = None  # msgs/s, median
    cpu_us: float | None = None  # client CPU per message, median
    p50_us: float | None = None
    p99_us: float | None = None
    skip: str | None = None
    error: str | None = None


def summarise(results: list[dict[str, Any]], n: int) -> Summary:
    ok = [r for r in results if "wall" in r]
    if not ok:
        first = results[0] if results else {}
        return Summary(skip=first.get("skip"), error=first.get("error", "no result"
                                                               if not first.get("skip")
                                                               else None))
    summary = Summary(runs=len(ok),
                      rate=statistics.median(n / r["wall"] for r in ok),
                      cpu_us=statistics.median(r["cpu"] / n * 1e6 for r in ok))
    if all("p50_us" in r for r in ok):
        summary.p50_us = statistics.median(r["p50_us"] for r in ok)
        summary.p99_us = statistics.median(r["p99_us"] for r in ok)
    failed = [r for r in results if "error" in r]
    if failed:
        summary.error = f"{len(failed)} of {len(results)} runs failed: {failed[0]['error']}"
    return summary


def table(summaries: dict[tuple[str, str], Summary], cases: list[Case],
          clients: list[str], sizes: dict[str, int]) -> str:
    lines = ["| case | client | msgs/s | CPU µs/msg | geamqp CPU ÷ this | notes |",
             "|---|---|---:|---:|---:|---|"]
    for case in cases:
        base = summaries.get((case.name, "geamqp"))
        for client in clients:
            s = summaries[(case.name, client)]
            label = f"{case.name} (N={sizes[case.name]:,})"
            if s.rate is None:
                why = f"skipped: {s.skip}" if s.skip else f"failed: {s.error}"
                lines.append(f"| {label} | {client} | — | — | — | {why} |")
                continue
            assert s.cpu_us is not None
            ratio = (f"{base.cpu_us / s.cpu_us:.2f}"
                     if base is not None and base.cpu_us and client != "geamqp" else "")
            notes = []
            if s.p50_us is not None:
                notes.append(f"p50 {s.p50_us:.0f} µs, p99 {s.p99_us:.0f} µs")
            if case.unit != "msgs":
                notes.append(f"per {case.unit[:-1]}")
            if s.error:
                notes.append(s.error)
            cpu = f"{s.cpu_us:.1f}" if s.cpu_us >= 1 else f"{s.cpu_us:.2f}"
            lines.append(f"| {label} | {client} | {s.rate:,.0f} | {cpu} | {ratio} | "
                         f"{'; '.join(notes)} |")
    return "\n".join(lines)


def targets(summaries: dict[tuple[str, str], Summary]) -> str:
    """The issue's targets, each with met / missed / not measured."""
    def get(case: str, client: str) -> Summary:
        return summaries.get((case, client), Summary())

    lines = []

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("**met**" if ok else "**missed**")

    for case, limit in (("publish", 4.0), ("confirm", 5.5), ("consume", 6.5)):
        g, p = get(case, "geamqp"), get(case, "pika-gevent")
        if g.cpu_us is None or p.cpu_us is None:
            lines.append(f"- {case}: CPU ≤ 1/3 of pika-gevent's and ≤ {limit} µs/msg "
                         "- not measured")
            continue
        lines.append(f"- {case}: geamqp CPU {g.cpu_us:.1f} µs/msg vs pika-gevent "
                     f"{p.cpu_us:.1f} ({g.cpu_us / p.cpu_us:.2f}x): ≤ 1/3 "
                     f"{verdict(g.cpu_us * 3 <= p.cpu_us)}; ≤ {limit} µs "
                     f"{verdict(g.cpu_us <= limit)}")
    for case in ("consume-multi", "rpc", "declare"):
        g, p, r = get(case, "geamqp"), get(case, "pika-gevent"), get(case, "raw")
        if g.cpu_us is None or p.cpu_us is None:
            continue
        floor = (f"; the raw client's is {r.cpu_us / p.cpu_us:.2f}x"
                 if r.cpu_us is not None else "")
        lines.append(f"- {case} (beyond the issue's three cases): geamqp CPU {g.cpu_us:.1f} "
                     f"vs pika-gevent {p.cpu_us:.1f} µs ({g.cpu_us / p.cpu_us:.2f}x{floor}): "
                     f"≤ 1/3 {verdict(g.cpu_us * 3 <= p.cpu_us)}")
    g, r = get("consume", "geamqp"), get("consume", "raw")
    if g.rate is not None and r.rate is not None:
        lines.append(f"- consume throughput ≥ 90 % of raw's ({g.rate:,.0f} vs {r.rate:,.0f} "
                     f"msgs/s, {g.rate / r.rate:.0%}) — {verdict(g.rate >= 0.9 * r.rate)}")
    g, r = get("rpc", "geamqp"), get("rpc", "raw")
    if g.p50_us is not None and r.p50_us is not None:
        lines.append(f"- rpc p50 within 1.25x of raw's ({g.p50_us:.0f} vs {r.p50_us:.0f} µs, "
                     f"{g.p50_us / r.p50_us:.2f}x) — {verdict(g.p50_us <= 1.25 * r.p50_us)}")
    return "\n".join(lines)


def _geamqp_revision() -> str:
    """The commit geamqp was measured at, and whether geamqp/ had uncommitted edits."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT,
                                  timeout=10, check=False).stdout.strip()
        except OSError:
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = git("status", "--porcelain", "--", "geamqp")
    return f"commit {head}" + (" plus uncommitted changes in geamqp/" if dirty else "")


def broker_version(url: str) -> str:
    conn = raw_client.RawConnection(url)
    try:
        return conn.server_version
    finally:
        conn.close()


# --------------------------------------------------------------------------- main


def _pick(value: str | None, known: list[str], what: str,
          parser: argparse.ArgumentParser) -> list[str]:
    if not value:
        return known
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in known]
    if unknown:
        parser.error(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N, 1 repeat: a smoke run")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per case and client (default 3; 1 with --quick)")
    parser.add_argument("--clients", help=f"comma-separated, of: {', '.join(CLIENTS)}")
    parser.add_argument("--cases", help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every N by this")
    parser.add_argument("--output", help="also write the report (Markdown) to this file")
    parser.add_argument("--profile", metavar="DIR",
                        help="cProfile each run's timed span into DIR/CASE-CLIENT-RUN.prof "
                             "(slows the clients: figures are then not comparable)")
    parser.add_argument("--url", default=DEFAULT_URL, help="broker URL (default: $AMQP_URL "
                                                          "or guest on 127.0.0.1)")
    parser.add_argument("--child", nargs=4, metavar=("CLIENT", "CASE", "QUEUE", "N"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        client, case_name, queue, n = args.child
        return child(client, case_name, queue, int(n), args.url)

    clients = _pick(args.clients, list(CLIENTS), "clients", parser)
    cases = [CASES[c] for c in _pick(args.cases, list(CASES), "cases", parser)]
    repeat = args.repeat or (1 if args.quick else 3)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    sizes = {c.name: max(1, int((c.n_quick if args.quick else c.n) * args.scale))
             for c in cases}
    results: dict[tuple[str, str], list[dict[str, Any]]] = {
        (c.name, cl): [] for c in cases for cl in clients}
    started = time.monotonic()
    # Repeats interleave (every case and client once, then again) so that a
    # noisy minute on the machine spreads over all clients instead of one.
    for rep in range(repeat):
        for case in cases:
            for client in clients:
                if any("skip" in r for r in results[(case.name, client)]):
                    continue  # a skip is a property of the client, not of the run
                profile = (os.path.join(args.profile, f"{case.name}-{client}-{rep + 1}.prof")
                           if args.profile else None)
                result = run_one(client, case, sizes[case.name], args.url, profile)
                results[(case.name, client)].append(result)
                shown = (f"{sizes[case.name] / result['wall']:,.0f} msgs/s, "
                         f"{result['cpu'] / sizes[case.name] * 1e6:.1f} µs/msg"
                         if "wall" in result else result.get("skip") or result.get("error"))
                print(f"[{time.monotonic() - started:6.1f}s] run {rep + 1}/{repeat} "
                      f"{case.name:<13} {client:<11} {shown}", file=sys.stderr, flush=True)

    summaries = {key: summarise(value, sizes[key[0]]) for key, value in results.items()}
    report = table(summaries, cases, clients, sizes)
    goals = targets(summaries) if "geamqp" in clients else ""
    print(report)
    if goals:
        print("\nTargets:\n" + goals)
    if args.output:
        command = "benchmarks/compare.py " + " ".join(shlex.quote(a) for a in
                                                       (argv if argv is not None
                                                        else sys.argv[1:]))
        header = [
            f"- date: {datetime.date.today().isoformat()}",
            f"- broker: RabbitMQ {broker_version(args.url)} at {args.url.split('@')[-1]}",
            f"- machine: {os.cpu_count()} CPUs (nproc), {platform.platform()}, "
            f"Python {platform.python_version()}",
            f"- geamqp: {_geamqp_revision()}",
            f"- command: `.venv/bin/python {command}`",
            f"- medians of {repeat} run(s) each, one subprocess per run; "
            f"total {time.monotonic() - started:.0f} s",
        ]
        with open(args.output, "w", encoding="utf-8") as out:
            out.write("\n".join(header) + "\n\n" + report + "\n")
            if goals:
                out.write("\nTargets:\n\n" + goals + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
