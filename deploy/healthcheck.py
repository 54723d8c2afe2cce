"""The image's HEALTHCHECK: /healthz on the port that the container's command serves.

`outbox-relay run` and `outbox-relay consume` serve /healthz on `--http-port` or
OUTBOX_RELAY_HTTP_PORT. Anything else this image runs (a producer script, `migrate`,
`status`) serves nothing, and so has nothing to fail here. The command is found among the
container's processes (PID 1, or its child under an init such as `--init`).
Exit 0 healthy, 1 unhealthy (Docker's and podman's convention).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

SERVING_COMMANDS = {"run", "consume"}


def served_port(argv: list[str], environ: dict[str, str]) -> int:
    """The port a process started with ``argv`` serves /healthz on; 0 for none."""
    runs_relay = any(Path(word).name == "outbox-relay" or word == "outbox_relay" for word in argv)
    if not runs_relay or not SERVING_COMMANDS & set(argv):
        return 0
    port = environ.get("OUTBOX_RELAY_HTTP_PORT", "0")
    for i, word in enumerate(argv):
        if word == "--http-port" and i + 1 < len(argv):
            port = argv[i + 1]
        elif word.startswith("--http-port="):
            port = word.split("=", 1)[1]
    return int(port) if port.isdigit() else 0


def container_commands() -> list[list[str]]:
    """Each process's argv, lowest PID first (this check's own process excluded)."""
    found = []
    pids = sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        found.append([word for word in raw.decode(errors="replace").split("\0") if word])
    return found


def main() -> int:
    ports = [served_port(argv, dict(os.environ)) for argv in container_commands()]
    port = next((p for p in ports if p), 0)
    if port == 0:
        return 0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            return 0 if reply.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"/healthz on port {port}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
