"""A private PgBouncer in front of the test database, for the pooler tests.

Debian's ``pgbouncer`` package (``.ci/run`` installs it), started on a free port of
127.0.0.1 with a small pool, in the pool mode the test asks for, forwarding every database
to the test PostgreSQL. Its configuration, pid file and log sit in a directory of its
own. PgBouncer refuses to run as root: as root it is started with ``-u`` as the
``postgres`` user (or ``nobody``), and its directory is that user's (pytest's own
temporary root is private to root, so the directory cannot be under ``tmp_path``; its log
is copied there when it stops).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg

from tests.support.http import free_port
from tests.support.services import unavailable

POOL_SIZE = 3
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class PgBouncer:
    port: int
    pool_mode: str
    url: str  # the test database's URL through this PgBouncer
    log_file: Path

    def log_text(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")


def _binary() -> str:
    debian = Path("/usr/sbin/pgbouncer")  # not on a user's PATH
    found = shutil.which("pgbouncer") or (str(debian) if debian.exists() else None)
    if found is None:
        unavailable("PgBouncer is not installed: `apt-get install pgbouncer` (.ci/run installs it)")
    return found


def _run_as() -> pwd.struct_passwd | None:
    """The user PgBouncer runs as when the tests run as root (it refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    unavailable("PgBouncer refuses to run as root, and there is no postgres or nobody user")
    return None  # not reached: unavailable() raises


@contextlib.contextmanager
def pgbouncer(
    database_url: str, tmp_path: Path, *, pool_mode: str = "transaction", pool_size: int = POOL_SIZE
) -> Iterator[PgBouncer]:
    """A PgBouncer in ``pool_mode`` in front of ``database_url``'s server; stopped after."""
    binary = _binary()
    user = _run_as()
    target = urlsplit(database_url)
    login = unquote(target.username or "postgres")
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="outbox-relay-pgbouncer-"))
    server = f"host={target.hostname or '127.0.0.1'} port={target.port or 5432}"
    if target.password:
        server += f" user={login} password={unquote(target.password)}"
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = {server}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'users.txt'}\n"
        f"pool_mode = {pool_mode}\n"
        f"default_pool_size = {pool_size}\n"
        "reserve_pool_size = 0\n"
        "max_client_conn = 500\n"
        f"logfile = {directory / 'pgbouncer.log'}\n"
        f"pidfile = {directory / 'pgbouncer.pid'}\n",
        encoding="utf-8",
    )
    (directory / "users.txt").write_text(f'"{login}" ""\n', encoding="utf-8")
    args = [binary, "-q"]
    if user is not None:
        os.chown(directory, user.pw_uid, user.pw_gid)
        for path in directory.iterdir():
            os.chown(path, user.pw_uid, user.pw_gid)
        args += ["-u", user.pw_name]
    process = subprocess.Popen(
        [*args, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    netloc = (target.netloc.rpartition("@")[0] + "@" if "@" in target.netloc else "") + (
        f"127.0.0.1:{port}"
    )
    bouncer = PgBouncer(
        port=port,
        pool_mode=pool_mode,
        url=urlunsplit(target._replace(netloc=netloc)),
        log_file=directory / "pgbouncer.log",
    )
    try:
        _wait_until_it_answers(bouncer, process)
        yield bouncer
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # SIGINT: shut down at once
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process.stderr is not None:
            process.stderr.close()
        with contextlib.suppress(OSError):
            shutil.copy(bouncer.log_file, tmp_path / f"pgbouncer-{pool_mode}.log")
        shutil.rmtree(directory, ignore_errors=True)


def _wait_until_it_answers(bouncer: PgBouncer, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            stderr = process.stderr.read() if process.stderr else ""
            log = bouncer.log_text() if bouncer.log_file.exists() else ""
            raise RuntimeError(f"PgBouncer exited with {process.returncode}: {stderr}\n{log}")
        try:
            psycopg.connect(bouncer.url, connect_timeout=2).close()
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        else:
            return
