"""A private, throwaway PostgreSQL for fault tests: stopping it never touches the shared server."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

from tests.ports import free_port

IS_ROOT = os.geteuid() == 0


def pg_bindir() -> str | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(f"{d}/initdb", os.X_OK) and os.access(f"{d}/pg_ctl", os.X_OK):
            return d
    found = shutil.which("pg_ctl")
    return os.path.dirname(found) if found and shutil.which("initdb") else None


class PrivatePostgres:
    """A throwaway PostgreSQL on a free loopback port, stoppable and restartable at will."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="tokensvc-fault-pg.")
        self.data = f"{self.dir}/data"
        self.port = free_port()
        os.mkdir(f"{self.dir}/sock")
        if IS_ROOT:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(f"{self.dir}/sock", "postgres", "postgres")

    def _run(self, *args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if IS_ROOT else list(args)
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(
            f"{self.bindir}/initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        with open(f"{self.data}/postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.dir}/sock'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )

    def start(self) -> None:
        self._run(f"{self.bindir}/pg_ctl", "-D", self.data, "-l", f"{self.dir}/log", "-w", "start")

    def stop(self) -> None:
        self._run(f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        if os.path.exists(f"{self.data}/postmaster.pid"):
            self._run(f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
