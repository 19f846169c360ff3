"""A throwaway PostgreSQL cluster on loopback for the tests (Debian's server binaries).

``initdb`` into a fresh directory under /tmp, ``pg_ctl start`` on a free port with
``listen_addresses=127.0.0.1`` and the unix socket in that directory; a role with a password
(the agent connects over TCP with it, as in production); one database per test. As root the
server runs as the ``postgres`` OS user (``initdb`` refuses root), so the directory is chowned
to it. Nothing outside 127.0.0.0/8 and the directory is touched; :meth:`PgCluster.destroy`
stops the server and removes the directory.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

ROLE = "edge"
PASSWORD = "edge-test-password"


def pg_bin_dir() -> Path | None:
    """The newest installed server's bin directory, or ``None`` when there is none."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One cluster; :meth:`start` once, :meth:`new_database` per test, :meth:`destroy` at the end."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="edge-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._names = itertools.count(1)

    def _run(self, *cmd: str) -> None:
        done = subprocess.run(
            [*self._as, *cmd], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr}")

    def start(self) -> None:
        if not self.data.exists():
            self._run(
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            )
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.dir / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        self.psql(
            f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='{ROLE}') THEN "
            f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'; END IF; END$$"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop (fast: sessions are cut) and start again on the same port."""
        self.stop()
        self.start()

    def psql(self, sql: str, db: str = "postgres") -> str:
        done = subprocess.run(
            [
                *self._as,
                str(self.bin / "psql"),
                "-h",
                str(self.dir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAtc",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout

    def new_database(self) -> str:
        """A fresh database owned by the test role; returns its URL (no password in it)."""
        name = f"t{next(self._names)}"
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return self.url(name)

    def url(self, db: str) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{db}"

    def destroy(self) -> None:
        try:
            if self.data.exists():
                self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


_CLUSTER: PgCluster | None = None


def cluster() -> PgCluster:
    """The test session's one cluster, started on first use and destroyed at exit.

    Skips the calling test, with the reason, only when no server binaries are installed
    (``scripts/install-system-deps.sh`` installs them; CI runs it).
    """
    global _CLUSTER
    if _CLUSTER is None:
        import pytest

        bin_dir = pg_bin_dir()
        if bin_dir is None:
            pytest.skip(
                "PostgreSQL server binaries not installed (/usr/lib/postgresql/*/bin/initdb); "
                "run scripts/install-system-deps.sh"
            )
        c = PgCluster(bin_dir)
        atexit.register(c.destroy)
        c.start()
        _CLUSTER = c
    return _CLUSTER
