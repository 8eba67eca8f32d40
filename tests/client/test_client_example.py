"""client/examples/protected.py, run as the README runs it (PYTHONPATH=client), in front of a real
`tokensvc serve`: a reader's token reads, cannot write, no token is a 401, /healthz shows hits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.client.served_tokensvc import serve_tokensvc
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


async def test_example_service_protects_its_routes(
    pg_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """The example allows GET with a read token (then from the cache), refuses POST (403) and
    no token (401), and its /healthz counts the hit."""
    async with (
        serve_tokensvc(
            tmp_path, pg_url=pg_url, redis_url=redis_url, redis_prefix=redis_prefix
        ) as served,
        aiohttp.ClientSession() as session,
    ):
        minted = await served.mint(
            session, subject="alice", operations=["read"], resources=["/docs/*"]
        )
        port = free_port()
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT / "client"),
            TOKENSVC_SERVICE_TOKEN=served.service_token,
        )
        log = (tmp_path / "example.log").open("wb")
        proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once, nothing blocks
            [
                sys.executable,
                "client/examples/protected.py",
                "--tokensvc",
                served.base,
                "--port",
                str(port),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with session.get(base + "/healthz") as resp:
                        if resp.status == 200 and (await resp.json())["stream_state"] == "live":
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, (tmp_path / "example.log").read_text()
                await asyncio.sleep(0.2)
            auth = {"Authorization": f"Bearer {minted['token']}"}

            statuses = []
            for method in ("GET", "GET", "POST"):
                async with session.request(method, base + "/docs/1", headers=auth) as resp:
                    statuses.append(resp.status)
            async with session.get(base + "/docs/1") as resp:
                statuses.append(resp.status)
            async with session.get(base + "/healthz") as resp:
                health = await resp.json()
        finally:
            proc.terminate()
            proc.wait(15)
            log.close()

    assert statuses == [200, 200, 403, 401]
    assert health["hits"] >= 2 and health["misses"] == 1
