"""KEK rotation with three live `tokensvc serve` processes on one PostgreSQL, as an operator does it.

The procedure of docs/security.md ("Rotating the key-encryption key"), each step a rolling
restart, one replica at a time, while a verify loop asks every replica about every token minted
so far (the old ones and those minted mid-rotation):

1. every replica learns the new KEK as one that only opens (TOKENSVC_KEK_PREVIOUS);
2. every replica seals with the new KEK, the old one only opens; a replica on the new KEK makes
   a root key and mints while the others still seal with the old one;
3. `tokensvc keys reseal --local`, then `tokensvc keys kek-status --local` says nothing is left;
4. every replica restarts with the new KEK alone.

Pass: 0 failed verifies (every answer a replica gave was 200), every token minted before or
during the rotation verifies on every replica at the end, the old KEK is gone from every
process's configuration, and a replica started with only the old KEK refuses in one line.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_PASSWORD, basic_auth
from tests.ports import free_port
from tests.tokensvc.test_cli_login import TOKENSVC, _clean_env


def _kek() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _call(
    method: str, url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else {}


class Replica:
    """One `tokensvc serve` process on its own port, restartable with another environment."""

    def __init__(self, name: str, port: int, logs: Path) -> None:
        self.name, self.port, self.logs = name, port, logs
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, env: dict[str, str]) -> None:
        self.starts += 1
        log = (self.logs / f"{self.name}-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [TOKENSVC, "serve", "--port", str(self.port)], env=env, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start: {self.log_text()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: requests in flight drain first
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, env: dict[str, str]) -> None:
        self.stop()
        self.start(env)

    def log_text(self) -> str:
        return (self.logs / f"{self.name}-{self.starts}.log").read_text(errors="replace")[-3000:]


@dataclass
class VerifyLoop:
    """Verifies every known token on every replica, round after round, in a thread.

    A refused connection is the replica being restarted (a load balancer would skip it) and is
    counted apart; any answer other than 200 is a failed verify.
    """

    replicas: list[Replica]
    tokens: list[str] = field(default_factory=list)
    answered: int = 0
    refused: int = 0
    failures: list[str] = field(default_factory=list)
    rounds: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, token: str) -> None:
        with self._lock:
            self.tokens.append(token)

    def run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                tokens = list(self.tokens)
            for token in tokens:
                for replica in self.replicas:
                    try:
                        status, body = _call(
                            "POST", replica.base + "/v1/verify", {"token": token, "context": {}}
                        )
                    except OSError:
                        self.refused += 1
                        continue
                    self.answered += 1
                    if status != 200:
                        self.failures.append(f"{replica.name}: {status} {body}")
                time.sleep(0.005)  # two cores, shared: leave the replicas room to start
            self.rounds += 1

    @contextlib.contextmanager
    def running(self) -> Iterator[VerifyLoop]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=30)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKENSVC, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_kek_rotation_with_three_live_replicas_loses_no_verify_and_no_key(
    tmp_path: Path, pg_url: str
) -> None:
    """Rotated and re-sealed while three replicas serve: 0 failed verifies, 0 keys lost, the old
    KEK removed at the end, and a start with only the old KEK is one line naming TOKENSVC_KEK."""
    old, new = _kek(), _kek()
    base = _clean_env(tmp_path)
    base.update(
        TOKENSVC_DATA_DIR=str(tmp_path / "data"),
        TOKENSVC_DATABASE_URL=pg_url,
        TOKENSVC_ADMIN_PASSWORD=ADMIN_PASSWORD,
        TOKENSVC_PASSWORD_PROFILE="CHEAP_FOR_TESTS",
        TOKENSVC_ALLOW_INSECURE="test-password-profile",
        TOKENSVC_VERIFY_PORT="off",
        TOKENSVC_LOG_LEVEL="warning",
    )

    def env(current: str, *previous: str) -> dict[str, str]:
        return {**base, "TOKENSVC_KEK": current, "TOKENSVC_KEK_PREVIOUS": ",".join(previous)}

    replicas = [Replica(f"r{i}", free_port(), tmp_path) for i in range(3)]
    loop = VerifyLoop(replicas)
    try:
        for replica in replicas:
            replica.start(env(old))
        status, body = _call(
            "POST", replicas[0].base + "/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD)
        )
        assert status == 200, body
        admin = {"Authorization": f"Bearer {body['token']}"}

        def mint(replica: Replica, **extra: Any) -> str:
            status, body = _call(
                "POST", replica.base + "/v1/tokens", {"subject": "alice", **extra}, admin
            )
            assert status == 201, body
            loop.add(body["token"])
            return str(body["token"])

        for replica in replicas:
            mint(replica)
        mint(replicas[1], service=True, ttl="30d")
        assert _call("POST", replicas[2].base + "/v1/keys/rotate", {}, admin)[0] == 201
        mint(replicas[2])

        with loop.running():
            # 1. The new KEK opens everywhere before anyone seals with it.
            for replica in replicas:
                replica.restart(env(old, new))
            # 2. The new KEK seals, the old one opens; a key sealed under the new KEK by the
            #    first replica is verified by replicas still sealing with the old one.
            for i, replica in enumerate(replicas):
                replica.restart(env(new, old))
                if i == 0:
                    assert _call("POST", replica.base + "/v1/keys/rotate", {}, admin)[0] == 201
                    mint(replica)
                    mint(replica, service=True, ttl="30d")
            before = _cli(env(new, old), "keys", "kek-status", "--local", "--json")
            resealed = _cli(env(new, old), "keys", "reseal", "--local", "--json")
            after = _cli(env(new, old), "keys", "kek-status", "--local", "--json")
            over_api = _call("GET", replicas[1].base + "/v1/kek", headers=admin)
            # 4. The old KEK goes away.
            for replica in replicas:
                replica.restart(env(new))
            for replica in replicas:
                mint(replica)
            time.sleep(1.0)  # a few more rounds over everything, on the final configuration
        final = {
            (replica.name, token[-12:]): _call(
                "POST", replica.base + "/v1/verify", {"token": token, "context": {}}
            )[0]
            for replica in replicas
            for token in loop.tokens
        }
        for replica in replicas:
            replica.stop()
        refused = Replica("only-old", free_port(), tmp_path)
        with pytest.raises(RuntimeError):
            refused.start(env(old))
        assert refused.proc is not None
        refusal_code = refused.proc.wait(timeout=20)
        refusal = refused.log_text()
    finally:
        for replica in replicas:
            replica.stop()

    assert before.returncode == 1, before
    assert json.loads(before.stdout)["not_current"] >= 5, before.stdout
    assert resealed.returncode == 0, resealed
    assert json.loads(resealed.stdout)["resealed"] >= 5
    assert after.returncode == 0, after
    status = json.loads(after.stdout)
    assert status["not_current"] == 0
    assert [k["role"] for k in status["keks"]] == ["current", "previous"]
    assert status["keks"][1]["keys"] == 0
    assert over_api[0] == 200 and over_api[1]["not_current"] == 0
    assert loop.failures == [], loop.failures[:5]
    assert loop.rounds >= 3 and loop.answered > 100
    assert set(final.values()) == {200}, final
    assert len(loop.tokens) == 10  # 5 before, 2 mid-rotation, 3 after
    assert refusal_code != 0
    assert "Traceback" not in refusal, refusal
    errors = [line for line in refusal.splitlines() if line.strip()]
    assert len(errors) == 1, refusal
    assert errors[0].startswith("Error: TOKENSVC_KEK"), refusal
    print(
        f"verify loop: {loop.rounds} rounds, {loop.answered} answers (all 200), "
        f"{loop.refused} refused during restarts; {len(loop.tokens)} tokens on 3 replicas"
    )
