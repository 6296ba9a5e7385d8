"""Failover timing on the local 3-node cluster: kill -9 of a node under live traffic.

Each round: a confirmed publisher and a manual-ack consumer, each on its own connection
with ``recover=True``, heartbeat 2 s, the default back-off and the host list a, b, c (so
both sit on node a), publish to and consume from a quorum queue led by node a. Node a is
killed with SIGKILL; we time, from the kill, the loss as the client sees it, the end of
the recovery, the first confirmed publish of a message sent after the kill, and the first
delivery of such a message. Node a stays dead for `--wait` seconds (a publisher that has
not resumed by then counts as "stuck"), then is restarted for the next round.

Two publisher policies per round set: ``plain`` (today's client: a NackError is just
counted) and ``reopen`` (after a NackError the publisher closes its channel and opens a
new one: the cure proposed for the core, done by hand). Prints a Markdown table.

    python benchmarks/failover.py [--kills 10] [--wait 6] [--policies plain,reopen]

Starts the cluster with scripts/cluster.sh when it is not up, and stops it at the end if
it started it.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

import gevent

import geamqp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cluster"))
import clusterctl

QUORUM = {"x-queue-type": "quorum"}


class Round:
    """One kill: the times (seconds after the kill) of what a user sees."""

    def __init__(self) -> None:
        self.killed = 0.0
        self.lost: float | None = None
        self.recovered: float | None = None
        self.confirmed: float | None = None
        self.delivered: float | None = None
        self.nacks = 0

    def since_kill(self) -> float:
        return time.monotonic() - self.killed


def _publish_loop(conn: geamqp.Connection, queue: str, result: Round, policy: str,
                  deadline: float) -> None:
    channel = conn.channel()
    channel.confirm_delivery()
    while time.monotonic() < deadline:
        after_kill = result.killed > 0
        try:
            channel.basic_publish("", queue, b"1" if after_kill else b"0")
            if after_kill and result.confirmed is None:
                result.confirmed = result.since_kill()
                return
        except geamqp.NackError:
            result.nacks += 1
            if policy == "reopen":
                channel.close()
                channel = conn.channel()
                channel.confirm_delivery()
        except geamqp.AMQPError:
            pass  # PublishOutcomeUnknown at the loss; waits are bounded by the supervisor
        gevent.sleep(0.01)


def one_round(queue: str, policy: str, wait: float) -> Round:
    result = Round()
    urls = clusterctl.urls("abc")
    pub = clusterctl.connect_in_order(urls, name="failover-pub")
    sub = clusterctl.connect_in_order(urls, name="failover-sub")
    try:
        pub.add_on_connection_lost_callback(
            lambda *_: setattr(result, "lost", result.lost or result.since_kill()))
        pub.add_on_recovered_callback(
            lambda *_: setattr(result, "recovered", result.recovered or result.since_kill()))

        def on_message(channel: geamqp.Channel, method: object, _p: object, body: bytes) -> None:
            if body == b"1" and result.delivered is None:
                result.delivered = result.since_kill()
            channel.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]

        sub.channel().basic_consume(queue, on_message)
        publisher = gevent.spawn(_publish_loop, pub, queue, result, policy,
                                 time.monotonic() + 30 + wait)
        gevent.sleep(0.5)  # traffic flowing before the kill
        target = clusterctl.pid("a")
        result.killed = time.monotonic()
        os.kill(target, signal.SIGKILL)
        end = result.killed + wait
        while time.monotonic() < end and (result.confirmed is None or result.delivered is None):
            gevent.sleep(0.01)
        publisher.kill()
    finally:
        clusterctl.start()  # node a back before the connections close and the next round
        pub.close()
        sub.close()
    return result


def _fmt(values: list[float | None], wait: float) -> str:
    done = [v for v in values if v is not None]
    stuck = len(values) - len(done)
    if not done:
        return f"all stuck > {wait:.0f} s"
    text = f"{statistics.median(done):.2f} / {max(done):.2f}"
    return text + (f" ({stuck} stuck > {wait:.0f} s)" if stuck else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--wait", type=float, default=6.0)
    parser.add_argument("--policies", default="plain,reopen")
    args = parser.parse_args()
    started_here = not clusterctl.is_up()
    clusterctl.start()
    try:
        print("| publisher | kills | loss seen | recovered | first confirm | first delivery "
              "| rounds with nacks |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for policy in args.policies.split(","):
            rounds = []
            for _ in range(args.kills):
                queue = f"failover-bench-{uuid.uuid4().hex[:8]}"
                with geamqp.connect(clusterctl.url("a"), recover=False) as conn:
                    conn.channel().queue_declare(queue, durable=True, arguments=QUORUM)
                rounds.append(one_round(queue, policy, args.wait))
                with geamqp.connect(clusterctl.url("b"), recover=False) as conn:
                    conn.channel().queue_delete(queue)
            print(f"| {policy} | {len(rounds)} "
                  f"| {_fmt([r.lost for r in rounds], args.wait)} "
                  f"| {_fmt([r.recovered for r in rounds], args.wait)} "
                  f"| {_fmt([r.confirmed for r in rounds], args.wait)} "
                  f"| {_fmt([r.delivered for r in rounds], args.wait)} "
                  f"| {sum(r.nacks > 0 for r in rounds)} |", flush=True)
        print("\ncells: median / max seconds after the kill -9")
    finally:
        if started_here:
            clusterctl.stop()


if __name__ == "__main__":
    main()
