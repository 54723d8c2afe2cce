"""``python -m benchmarks [all|SCENARIO ...] [--quick]``: run benchmark scenarios against the
local PostgreSQL and RabbitMQ, print one JSON line per figure and a table, and write
``benchmarks/RESULTS.md`` (skipped with ``--no-write``, and always in ``--quick``)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import time
import traceback

from benchmarks import results
from benchmarks.common import Env, Figure, Report, services
from outbox_relay.logs import configure_logging

# Order of `all`.
SCENARIOS = [
    "throughput",
    "latency",
    "idle",
    "producer",
    "relays",
    "scale",
    "blocked",
    "consumer",
    "peers",
    "rate_limit",
]


def available() -> list[str]:
    return [name for name in SCENARIOS if importlib.util.find_spec(f"benchmarks.{name}")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("scenarios", nargs="*", default=["all"], help=f"all, or of {SCENARIOS}")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    names = available() if args.scenarios == ["all"] else args.scenarios
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {SCENARIOS}")
    # The consumer runs in this process: its per-message events would dominate.
    configure_logging(level="warning", fmt="json")
    env = Env.from_environment(quick=args.quick)
    report = Report()
    started = time.time()
    servers = services(env)
    print(f"services: {servers}")
    failed = []
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            module.run(env, report)
        except Exception as exc:  # the services are shared: report it, run the rest
            traceback.print_exc()
            failed.append(name)
            report.add(Figure(name, f"FAILED: {type(exc).__name__}: {exc}"[:200], 0, ""))
    print()
    print(report.table())
    if not (args.quick or args.no_write):
        path = results.write(report, names, started=started, services=servers)
        print(f"\nwritten to {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
