"""Locust scenario for tokensvc: login → mint → verify, weighted as a real deployment would be.

Services verify on every request they serve; people log in a few times a day; tokens for
services are minted now and then. So each simulated client logs in once at start (POST /v1/login
with its username and password), then mostly verifies (weight 50), sometimes mints a narrowed
token with the admin token (weight 5), verifies that fresh token (weight 5), and rarely logs in
again (weight 1; argon2 at the service's profile, deliberately slow).

Configuration from the environment (`python -m loadtests locust` sets all of it up):

    LOADTESTS_ADMIN_TOKEN     an admin token (else LOADTESTS_ADMIN_USER/LOADTESTS_ADMIN_PASSWORD
                              are used to log in once at test start)
    LOADTESTS_USERS           comma-separated usernames that can log in
    LOADTESTS_PASSWORD        their (shared) password

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 --headless -u 50 -r 10 -t 30s
"""

from __future__ import annotations

import itertools
import os
import random
from typing import Any

from locust import HttpUser, between, events, task

CONTEXT = {"operation": "read", "resource": "/docs/1", "audience": "files"}
MINT_BODY = {"ttl": "10m", "operations": ["read"], "resources": ["/docs/*"], "audience": ["files"]}

_state: dict[str, Any] = {"admin": os.environ.get("LOADTESTS_ADMIN_TOKEN")}
_counter = itertools.count()


@events.test_start.add_listener
def _admin_token(environment: Any, **_: Any) -> None:
    """Obtain the admin token once, before any simulated user starts."""
    if _state["admin"]:
        return
    user, password = (
        os.environ.get("LOADTESTS_ADMIN_USER"),
        os.environ.get("LOADTESTS_ADMIN_PASSWORD"),
    )
    if not (user and password and environment.host):
        raise RuntimeError(
            "set LOADTESTS_ADMIN_TOKEN, or LOADTESTS_ADMIN_USER and LOADTESTS_ADMIN_PASSWORD"
        )
    import json
    import urllib.request

    req = urllib.request.Request(
        environment.host.rstrip("/") + "/v1/login",
        data=json.dumps({"username": user, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        _state["admin"] = json.loads(resp.read())["token"]


class TokenUser(HttpUser):
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        users = [u for u in os.environ.get("LOADTESTS_USERS", "").split(",") if u]
        self.username = users[next(_counter) % len(users)] if users else None
        self.password = os.environ.get("LOADTESTS_PASSWORD", "")
        self.token: str | None = None
        self.fresh: list[str] = []
        self.login()
        if self.token is None:
            self.mint()  # no login users configured: verify tokens minted by the admin

    @task(1)
    def login(self) -> None:
        if not self.username:
            return
        with self.client.post(
            "/v1/login",
            json={"username": self.username, "password": self.password},
            name="/v1/login",
            catch_response=True,
        ) as resp:
            if resp.status_code == 200:
                self.token = resp.json()["token"]
                resp.success()
            elif resp.status_code in (429, 503):
                resp.success()  # throttled or shed by design under load: not an error of ours
            else:
                resp.failure(f"login answered {resp.status_code}")

    @task(5)
    def mint(self) -> None:
        subject = f"locust-{random.randrange(1000)}"
        with self.client.post(
            "/v1/tokens",
            json={"subject": subject, **MINT_BODY},
            headers={"Authorization": f"Bearer {_state['admin']}"},
            name="/v1/tokens",
            catch_response=True,
        ) as resp:
            if resp.status_code == 201:
                self.fresh = ([*self.fresh, resp.json()["token"]])[-8:]
                if self.token is None:
                    self.token = self.fresh[-1]
                resp.success()
            else:
                resp.failure(f"mint answered {resp.status_code}")

    @task(50)
    def verify(self) -> None:
        if self.token is None:
            return
        self._verify(self.token, "/v1/verify (login token)", {})

    @task(5)
    def verify_fresh(self) -> None:
        if self.fresh:
            self._verify(random.choice(self.fresh), "/v1/verify (minted token)", CONTEXT)

    def _verify(self, token: str, name: str, context: dict[str, str]) -> None:
        with self.client.post(
            "/v1/verify", json={"token": token, "context": context}, name=name, catch_response=True
        ) as resp:
            if resp.status_code == 200 and resp.json().get("valid") is True:
                resp.success()
            else:
                resp.failure(f"verify answered {resp.status_code}")
