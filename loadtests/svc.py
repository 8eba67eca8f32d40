"""Helpers for the benchmarks that run tokensvc against Redis (storm, workers, locust).

Built on httpbench's process and token helpers: a tokensvc started with a Redis lockout store under
a unique key prefix (whose keys are deleted at the end), CPU time summed over a process tree (the
`--workers N` supervisor and its workers), and users created through the admin API.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from loadtests.common import free_ports, tree_cpu_seconds
from loadtests.httpbench import Server, _start, _tokensvc_bin

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def base_env() -> dict[str, str]:
    """The caller's environment without any TOKENSVC_* variable (the benchmark sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}


def unique_prefix(kind: str) -> str:
    # No braces: the Redis store puts its own hash tags after the prefix.
    return f"loadtests-{kind}-{os.getpid()}-{secrets.token_hex(4)}:"


def check_redis(url: str) -> None:
    """RuntimeError with a clear message unless Redis answers PING at `url`."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RuntimeError(
            f"Redis at {url} does not answer ({exc}); start one on loopback"
        ) from exc
    finally:
        client.close()


def delete_prefix(url: str, prefix: str, *, max_keys: int = 5_000_000) -> int:
    """Delete every key under `prefix` (bounded); the number deleted, or -1 if Redis is gone."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=3)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.delete(*batch))
                batch.clear()
            if deleted + len(batch) >= max_keys:
                break
        if batch:
            deleted += int(client.delete(*batch))
        return deleted
    except redis.RedisError:
        return -1
    finally:
        client.close()


class TreeServer(Server):
    """A Server whose CPU time includes its child processes (the `--workers N` workers)."""

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid, self._clk_tck)


@dataclass
class RedisService:
    server: Server
    env: dict[str, str]
    redis_url: str
    prefix: str
    # The port given as TOKENSVC_VERIFY_PORT (httpbench.use_verify_ports points the load at it).
    verify_port: int


def start_tokensvc(
    name: str,
    workdir: Path,
    *,
    redis_url: str,
    prefix: str,
    port: int,
    data_dir: Path,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
) -> RedisService:
    # A verify listener port of our own: the default (port + 1) may be another server's port.
    verify_port = next(p for p in free_ports(2) if p != port)
    env = dict(
        base_env(),
        TOKENSVC_DATA_DIR=str(data_dir),
        TOKENSVC_PORT=str(port),
        TOKENSVC_HOST="127.0.0.1",
        TOKENSVC_REDIS_URL=redis_url,
        TOKENSVC_REDIS_PREFIX=prefix,
        TOKENSVC_VERIFY_PORT=str(verify_port),
        **(extra_env or {}),
    )
    cmd = [_tokensvc_bin(), "serve"]
    if workers != 1:
        cmd += ["--workers", str(workers)]
    proc_server = _start(name, cmd, env, port, workdir, None)
    server = TreeServer(proc_server.name, proc_server.proc, proc_server.port, proc_server.log)
    return RedisService(server, env, redis_url, prefix, verify_port)


async def create_users(base: str, admin: str, names: list[str], password: str) -> None:
    """POST /v1/users for each name (argon2 at the service's profile hashes each)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {admin}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for name in names:
            async with session.post(
                base + "/v1/users",
                json={"name": name, "password": password, "roles": []},
                headers=headers,
            ) as resp:
                text = await resp.text()
                if resp.status not in (200, 201):
                    raise RuntimeError(
                        f"POST /v1/users {name!r} answered {resp.status}: {text[:300]}"
                    )


def bench_password() -> str:
    return "Lt-" + secrets.token_urlsafe(18)


def cpu_share(before: float, after: float, seconds: float) -> float:
    return (after - before) / seconds if seconds else float("nan")
