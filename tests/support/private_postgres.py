"""A private PostgreSQL cluster for tests that stop or restart the database.

The shared PostgreSQL is never restarted by a test. A test that needs a database outage
of its own starts a cluster of its own: ``initdb`` into a fresh directory, trust
authentication, listening on 127.0.0.1 on a free port with its Unix socket in that
directory, ``fsync`` off (the cluster is thrown away), started and stopped with
``pg_ctl``. :func:`private_standby` adds a streaming standby of such a cluster
(``pg_basebackup -R``), which a test promotes (``pg_ctl promote``) after killing the
primary. It needs the PostgreSQL server installed (Debian: the newest
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

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend of this cluster: a crashed server
        (what ``pg_ctl stop -m immediate`` does short of the kill), no shutdown checkpoint,
        nothing more sent to a standby."""
        _kill_postmaster(self)

    def promote(self) -> None:
        """Promote this standby; returns once it accepts writes."""
        self.pg_ctl("promote")

    def sql(self, query: str) -> str:
        """``psql -Atc QUERY`` as the superuser: one value per line."""
        return self.run(
            "psql",
            *("-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres"),
            *("-Atc", query),
        ).strip()

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


def _settings(cluster: PrivatePostgres, extra: str = "") -> str:
    return (
        "listen_addresses = '127.0.0.1'\n"
        f"port = {cluster.port}\n"
        f"unix_socket_directories = '{cluster.directory}'\n"
        "fsync = off\n"
        "synchronous_commit = off\n"
        "full_page_writes = off\n"
        "wal_keep_size = '256MB'\n"  # a standby that lags does not need a slot
        + extra  # later lines win
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
    _kill_postmaster(cluster)


def _kill_postmaster(cluster: PrivatePostgres) -> None:
    """SIGKILL the postmaster and then its children (they would exit on their own once
    they notice it gone; a killed primary must stop streaming at once)."""
    try:
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    children = subprocess.run(
        ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in [postmaster, *(int(c) for c in children if c.isdigit())]:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def private_postgres(*, settings: str = "") -> Iterator[PrivatePostgres]:
    """Start a private PostgreSQL cluster, with ``settings`` (postgresql.conf lines)
    after the private ones; stopped and its files removed on exit, whatever the test did.
    Skips (fails under CI) when PostgreSQL is not installed."""
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
            conf.write(_settings(cluster, settings))
        try:
            cluster.pg_ctl("start")
            yield cluster
        finally:
            _stop(cluster)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def private_standby(
    primary: PrivatePostgres, *, name: str = "standby"
) -> Iterator[PrivatePostgres]:
    """A streaming standby of ``primary`` (``pg_basebackup -R``: hot standby, connected
    as ``application_name=NAME``, so ``synchronous_standby_names = 'NAME'`` on the
    primary makes it synchronous); stopped and its files removed on exit."""
    directory = Path(tempfile.mkdtemp(prefix="outbox-pg-standby-"))
    try:
        primary.owner.hand_over(directory)
        standby = PrivatePostgres(
            port=free_port(), directory=directory, bindir=primary.bindir, owner=primary.owner
        )
        standby.run(
            "pg_basebackup",
            *("-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"),
            *("-D", str(standby.data), "-R", "-X", "stream", "--no-sync", "-c", "fast"),
        )
        # postgresql.auto.conf (which -R wrote) is read last: these lines win.
        with (standby.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                f"port = {standby.port}\n"
                f"unix_socket_directories = '{directory}'\n"
                "hot_standby = on\n"
                # A standby that just lost its primary waits this long (default 5 s)
                # before it looks again, and a promotion waits for that: measured 5.1 s
                # for `pg_ctl promote` with the default, 0.3 s with this.
                "wal_retrieve_retry_interval = '200ms'\n"
                # Copied from the primary, it would make the promoted standby wait for
                # a synchronous standby of its own that does not exist: every commit hangs.
                "synchronous_standby_names = ''\n"
                f"primary_conninfo = 'host=127.0.0.1 port={primary.port} user=postgres "
                f"application_name={name}'\n"
            )
        try:
            standby.pg_ctl("start")
            yield standby
        finally:
            _stop(standby)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
