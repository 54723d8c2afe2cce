"""``python -m benchmarks.ab REV``: the relay of this checkout against the relay of another
commit, in the same run.

A change that should not change behaviour (a refactor, a dependency bump) must not change
speed either. Both relays run as ``outbox-relay run`` against the same database, broker,
schema version and producers, in alternating rounds (each goes first as often as the
other): throughput on a committed backlog of 512 B rows, and commit-to-delivery at 1k msg/s
with one message per transaction, measured as the ``throughput`` and ``latency``
scenarios measure them. The figures are this checkout's over REV's: the median of the
rounds' throughput ratios, and the p50 and p99 of the pooled latencies. REV's tree is
exported with ``git archive`` into a temporary directory; its relay must accept the same
command line and schema as this checkout's.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks import latency, throughput
from benchmarks.common import HERE, Env, Figure, Report, Rounds, median
from outbox_relay.logs import configure_logging

SCENARIO = "ab"
ROUNDS = 3
# The change allowed either way; `python -m benchmarks.ab HEAD` (A against A) shows how
# much a loaded machine moves the ratios by itself.
NOISE = 0.1


@contextlib.contextmanager
def exported(rev: str) -> Iterator[Path]:
    """REV's tracked files in a temporary directory."""
    root = HERE.parent
    with tempfile.TemporaryDirectory(prefix="outbox-relay-ab-") as tmp:
        made = subprocess.run(
            ["git", "-C", str(root), "archive", rev], check=False, capture_output=True
        )
        if made.returncode != 0:
            why = made.stderr.decode(errors="replace").strip()
            raise SystemExit(f"python -m benchmarks.ab: cannot export {rev!r}: {why}")
        archive = made.stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield Path(tmp)


def run(env: Env, report: Report, rev: str, *, rounds: int, count: int, seconds: float) -> None:
    with exported(rev) as source:
        sides = {"this checkout": env, rev: dataclasses.replace(env, relay_source=source)}
        rates = Rounds()
        pooled = {name: latency.Latencies() for name in sides}
        for rates.round in range(rounds):
            order = list(sides.items())
            for name, side in order if rates.round % 2 == 0 else reversed(order):
                rates.add(name, throughput.relay_rate(side, count))
                pooled[name].add(latency.measure(side, latency.the_relay, duration_s=seconds))
    ours, theirs = "this checkout", rev
    ratio = rates.ratio(ours, theirs)
    report.add(
        Figure(
            SCENARIO,
            f"throughput, {count} rows, this checkout / {rev}",
            round(ratio, 3),
            "x",
            target=f">= {1 - NOISE:g} x",
            met=ratio >= 1 - NOISE,
            extra={
                "round_ratios": rates.ratios(ours, theirs),
                "msg_per_s": {name: round(median(rates.rates[name])) for name in sides},
            },
        )
    )
    for key in latency.RATIO_KEYS:
        value = pooled[ours].figure(key) / pooled[theirs].figure(key)
        report.add(
            Figure(
                SCENARIO,
                f"commit to delivery {key}, this checkout / {rev}",
                round(value, 3),
                "x",
                target=f"<= {1 + NOISE:g} x",
                met=value <= 1 + NOISE,
                extra={
                    "ms": {name: round(pooled[name].figure(key), 2) for name in sides},
                    "per_round": [
                        round(a / b, 2)
                        for a, b in zip(
                            pooled[ours].round_figures(key),
                            pooled[theirs].round_figures(key),
                            strict=True,
                        )
                    ],
                },
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__)
    parser.add_argument("rev", help="the commit to compare with, e.g. HEAD~1 or main")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--rows", type=int, default=50_000, help="backlog per throughput run")
    parser.add_argument("--seconds", type=float, default=7.5, help="latency run length")
    parser.add_argument("--quick", action="store_true", help="1 round, 5k rows, 3 s")
    args = parser.parse_args(argv)
    configure_logging(level="warning", fmt="json")
    env = Env.from_environment(quick=args.quick)
    rounds, count, seconds = (
        (1, 5_000, 3.0) if args.quick else (args.rounds, args.rows, args.seconds)
    )
    report = Report()
    run(env, report, args.rev, rounds=rounds, count=count, seconds=seconds)
    print(report.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
