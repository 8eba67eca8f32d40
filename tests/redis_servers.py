"""Throwaway Redis servers from the local `redis-server`: one server, a Cluster, a Sentinel.

Each runs on free loopback ports in its own temporary directory, saves nothing to disk and is
removed with its directory afterwards. A missing `redis-server` (or `redis-cli`, which the
Debian package brings along) fails the test that needs it: it never skips.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import redis

from tests.ports import free_port

START_TIMEOUT = 20.0


def redis_binary(name: str = "redis-server") -> str:
    """The path of a Redis binary; the calling test fails (never skips) without it."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"these tests start private Redis servers and need {name}: "
            "install redis-server (apt-get install redis-server)"
        )
    return found


def wait_until(what: str, check: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
    """Poll `check` until it holds; fail with `what` if it does not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, redis.RedisError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"gave up waiting for {what}")


class RedisServer:
    """One redis-server on a free loopback port, stoppable and restartable."""

    def __init__(
        self,
        *,
        args: Sequence[str] = (),
        directory: Path | None = None,
        login: tuple[str, str] | None = None,
    ) -> None:
        self.login = login  # (user, password) of client(): for a server with an ACL file
        self.server = redis_binary()
        self.port = free_port()
        self.dir = directory or Path(tempfile.mkdtemp(prefix="tokensvc-redis."))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A synchronous client, for setting servers up and inspecting them in tests."""
        user, password = self.login or (None, None)
        return redis.Redis(
            port=self.port,
            socket_timeout=5,
            decode_responses=True,
            username=user,
            password=password,
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.dir / "log"),
             *self.args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(f"redis-server on port {self.port}", self._answers)

    def _answers(self) -> bool:
        with self.client() as client:
            return bool(client.ping())

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def kill(self) -> None:
        """Crash the server (SIGKILL): no shutdown, no waiting for replicas to catch up."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ClusterServers:
    """A Redis Cluster of three masters (no replicas), its slots split by `redis-cli --cluster`."""

    def __init__(self, masters: int = 3) -> None:
        redis_binary("redis-cli")
        self.root = Path(tempfile.mkdtemp(prefix="tokensvc-redis-cluster."))
        self.nodes: list[RedisServer] = []
        for n in range(masters):
            directory = self.root / f"node{n}"
            # The bus port defaults to port + 10000, which may be taken or past 65535.
            args = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                    "--cluster-port", str(free_port()),
                    "--cluster-config-file", str(directory / "nodes.conf")]  # fmt: skip
            self.nodes.append(RedisServer(args=args, directory=directory))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [redis_binary("redis-cli"), "--cluster", "create", *addresses,
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        wait_until("the cluster state to be ok on every node", self._ok)

    def _ok(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                info = client.cluster("INFO")
            if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != len(self.nodes):
                return False
        return True

    def remove(self) -> None:
        for node in self.nodes:
            node.remove()
        shutil.rmtree(self.root, ignore_errors=True)


class SentinelServers:
    """A master, `replicas` replicas of it, and one Sentinel watching it as `service`; with
    `sentinel_password`, the Sentinel requires it (`requirepass`), the master still does not."""

    def __init__(
        self, *, service: str = "tokensvc-test", replicas: int = 0, sentinel_password: str = ""
    ) -> None:
        self.service = service
        self.sentinel_password = sentinel_password
        redis_binary()
        self.root = Path(tempfile.mkdtemp(prefix="tokensvc-redis-sentinel."))
        # Without the delay a replica is in sync at once rather than five seconds later.
        self.master = RedisServer(
            args=["--repl-diskless-sync-delay", "0"], directory=self.root / "master"
        )
        self.replicas = [
            RedisServer(
                args=["--replicaof", "127.0.0.1", str(self.master.port)],
                directory=self.root / f"replica{n}",
            )
            for n in range(replicas)
        ]
        self.sentinel_port = free_port()
        self.sentinel: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}"

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(
            port=self.sentinel_port,
            password=self.sentinel_password or None,
            socket_timeout=5,
            decode_responses=True,
        )

    def start(self) -> None:
        self.master.start()
        for replica in self.replicas:
            replica.start()
        # Sentinel rewrites its configuration file, so it gets a file of its own.
        config = self.root / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.root}\n"
            f"logfile {self.root / 'sentinel.log'}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 500\n"
            f"sentinel failover-timeout {self.service} 5000\n"
            + (f"requirepass {self.sentinel_password}\n" if self.sentinel_password else "")
        )
        self.sentinel = subprocess.Popen(
            [redis_binary(), str(config), "--sentinel"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until("Sentinel to watch the master and its replicas", self._watching)

    def master_port(self) -> int:
        """The port of the master Sentinel names now."""
        with self.sentinel_client() as client:
            _, port = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.service)
        return int(port)

    def _watching(self) -> bool:
        with self.sentinel_client() as client:
            replicas = client.execute_command("SENTINEL REPLICAS", self.service)
        return self.master_port() == self.master.port and len(replicas) == len(self.replicas)

    def remove(self) -> None:
        if self.sentinel is not None:
            self.sentinel.terminate()
            self.sentinel.wait(timeout=10)
            self.sentinel = None
        for server in (self.master, *self.replicas):
            server.remove()
        shutil.rmtree(self.root, ignore_errors=True)
