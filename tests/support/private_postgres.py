"""A private PostgreSQL cluster for tests that stop or restart the database.

The shared PostgreSQL is never restarted by a test. A test that needs a database outage
of its own starts a cluster of its own: ``initdb`` into a fresh directory, trust
authentication, listening on 127.0.0.1 on a free port with its Unix socket in that
directory, ``fsync`` off (the cluster is thrown away), started and stopped with
``pg_ctl``. It needs the PostgreSQL server installed (Debian: the newest
/usr/lib/postgresql/VERSION/bin, else ``initdb`` on PATH).

``initdb`` and the server refuse to run as root: as root they run as the ``postgres``
OS user, so the directory is made under the system's temporary directory (a test's
``tmp_path`` is private to root) and handed to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.http import free_port
from tests.support.services import unavailable

START_TIMEOUT_S = 60
COMMAND_TIMEOUT_S = 90
SERVER_USER = "postgres"  # the OS user the server runs as when the tests run as root
_DEBIAN_VERSIONS = Path("/usr/lib/postgresql")


def _version(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return ()


def server_bindir() -> Path | None:
    """The newest Debian PostgreSQL's bin directory, else the one of ``initdb`` on PATH."""
    installed = [
        (_version(initdb.parent.parent.name), initdb.parent)
        for initdb in _DEBIAN_VERSIONS.glob("*/bin/initdb")
    ]
    if installed:
        return max(installed)[1]
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass(frozen=True)
class Owner:
    """Who runs initdb and the server: the current user, or ``postgres`` for root."""

    uid: int | None
    gid: int | None

    @classmethod
    def for_current_user(cls) -> Owner:
        if os.geteuid() != 0:
            return cls(None, None)
        try:
            entry = pwd.getpwnam(SERVER_USER)
        except KeyError:
            unavailable(
                f"the tests run as root and there is no {SERVER_USER!r} OS user to run a "
                "private PostgreSQL as (initdb refuses root): create it, or run the tests "
                "as another user"
            )
        return cls(entry.pw_uid, entry.pw_gid)

    def hand_over(self, directory: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(directory, self.uid, self.gid)


@dataclass
class PrivatePostgres:
    port: int
    directory: Path
    bindir: Path
    owner: Owner

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, program: str, *args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
        """Run one of the server's programs as the cluster's owner."""
        result = subprocess.run(
            [str(self.bindir / program), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=self.directory,
            user=self.owner.uid,
            group=self.owner.gid,
            extra_groups=None if self.owner.uid is None else [],
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} exited {result.returncode}: "
                f"{(result.stdout + result.stderr).strip()}\n{self.log_tail()}"
            )
        return result.stdout

    def pg_ctl(self, action: str, *args: str) -> None:
        wait = ("-w", "-t", str(START_TIMEOUT_S))
        self.run("pg_ctl", action, "-D", str(self.data), "-l", str(self.log_file), *wait, *args)

    def restart(self) -> None:
        """Stop the server (fast: sessions are ended, as by a service restart) and start it
        again; returns once it accepts connections."""
        self.pg_ctl("restart", "-m", "fast")

    def ready(self) -> bool:
        result = subprocess.run(
            [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            check=False,
            timeout=COMMAND_TIMEOUT_S,
        )
        return result.returncode == 0

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _settings(cluster: PrivatePostgres) -> str:
    return (
        "listen_addresses = '127.0.0.1'\n"
        f"port = {cluster.port}\n"
        f"unix_socket_directories = '{cluster.directory}'\n"
        "fsync = off\n"
        "synchronous_commit = off\n"
        "full_page_writes = off\n"
    )


def _stop(cluster: PrivatePostgres) -> None:
    """Stop fast; immediate if that fails; SIGKILL to the postmaster as the last resort
    (its backends exit when they see it gone)."""
    for mode in ("fast", "immediate"):
        try:
            cluster.pg_ctl("stop", "-m", mode)
        except (RuntimeError, subprocess.TimeoutExpired):
            continue
        return
    with contextlib.suppress(OSError, ValueError, IndexError):
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """Start a private PostgreSQL cluster; stopped and its files removed on exit,
    whatever the test did. Skips (fails under CI) when PostgreSQL is not installed."""
    bindir = server_bindir()
    if bindir is None:
        unavailable(
            "the PostgreSQL server is not installed here (no initdb): this test starts a "
            "private cluster; install it (Debian: apt-get install postgresql)"
        )
    owner = Owner.for_current_user()
    directory = Path(tempfile.mkdtemp(prefix="outbox-pg-"))
    try:
        owner.hand_over(directory)
        cluster = PrivatePostgres(port=free_port(), directory=directory, bindir=bindir, owner=owner)
        cluster.run(
            "initdb",
            *("-D", str(cluster.data), "-U", "postgres", "-A", "trust", "-E", "UTF8"),
            *("--locale", "C", "--no-sync"),
        )
        with (cluster.data / "postgresql.conf").open("a") as conf:
            conf.write(_settings(cluster))
        try:
            cluster.pg_ctl("start")
            yield cluster
        finally:
            _stop(cluster)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
