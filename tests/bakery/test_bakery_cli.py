"""`tokensvc token discharge`, run as a real process against loopback tokensvc and bakery servers."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from macaroonbakery import bakery, checkers, httpbakery

from tests.bakery.conftest import ALICE_PASSWORD, Client, bearer, login, mint, with_third_party

MakeServer = Callable[..., Awaitable[TestServer]]

# The command is attached to the main CLI group by the lead; until then, run it on its own.
RUN = (
    "from tokensvc.cli.discharge import discharge_command; discharge_command(prog_name='discharge')"
)


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    def __repr__(self) -> str:
        return f"Result(rc={self.returncode}, stdout={self.stdout[-800:]!r}, stderr={self.stderr[-2000:]!r})"


async def run(env: dict[str, str], *args: str, stdin: bytes = b"") -> Result:
    """The discharge command in its own process; exit status and output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUN,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


class Ok(bakery.ThirdPartyCaveatChecker):  # type: ignore[misc]
    """`is-ok` holds, declaring nothing."""

    def check_third_party_caveat(self, ctx: Any, info: Any) -> list[checkers.Caveat]:
        if info.condition != "is-ok":
            raise bakery.ThirdPartyCaveatCheckFailed("no")
        return []


def recording_discharger(key: bakery.PrivateKey, seen: list[dict[str, str]]) -> web.Application:
    """A bakery discharger that records the headers of each discharge request."""

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"PublicKey": str(key.public_key), "Version": 3})

    async def discharge(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        content = dict(await request.post())
        macaroon = httpbakery.discharge(
            checkers.AuthContext(), content, key, bakery.ThirdPartyStore(), Ok()
        )
        return web.json_response({"Macaroon": macaroon.to_dict()})

    app = web.Application()
    app.router.add_get("/discharge/info", info)
    app.router.add_post("/discharge", discharge)
    return app


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment with its own config directory (no stored login yet)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    return env


def store_login(env: dict[str, str], url: str, token: str) -> None:
    """What `tokensvc login` leaves behind."""
    path = Path(env["XDG_CONFIG_HOME"]) / "tokensvc" / "credentials.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"url": url, "token": token}))
    path.chmod(0o600)


async def two_party_token(
    client: Client, admin_token: str, tokensvc_location: str, bakery_location: str, condition: str
) -> str:
    """A token for alice needing `condition` from tokensvc and `is-ok` from the bakery discharger."""
    token = await mint(client, admin_token, subject="alice")
    token = await with_third_party(client, token, tokensvc_location, condition)
    return await with_third_party(client, token, bakery_location, "is-ok")


async def test_discharges_every_caveat_and_verifies_the_bundle(
    aiohttp_server: MakeServer,
    client: Client,
    server: TestServer,
    admin_token: str,
    users: dict[str, str],
    discharger_url: str,
    cli_env: dict[str, str],
) -> None:
    """With a stored login, both caveats are discharged, bound, and /v1/verify says valid with alice declared."""
    seen: list[dict[str, str]] = []
    other = await aiohttp_server(recording_discharger(bakery.generate_key(), seen))
    token = await two_party_token(
        client, admin_token, discharger_url, str(other.make_url("")), "user-is alice"
    )
    store_login(cli_env, str(server.make_url("")), await login(client, "alice", ALICE_PASSWORD))

    result = await run(cli_env, token, "--json")

    assert result.returncode == 0, result
    body = json.loads(result.stdout)
    assert len(body["discharges"]) == 2
    assert body["verify"]["valid"] is True
    assert body["verify"]["subject"] == "alice"
    assert body["verify"]["declared"] == {"username": "alice"}
    # The login token went to tokensvc's discharger only, never to the other one.
    assert len(seen) == 1 and "Authorization" not in seen[0]


async def test_basic_credentials_from_stdin_and_discharges_only(
    aiohttp_server: MakeServer,
    client: Client,
    server: TestServer,
    admin_token: str,
    users: dict[str, str],
    discharger_url: str,
    cli_env: dict[str, str],
) -> None:
    """`--user alice --password-stdin --no-verify` prints bound discharges that /v1/verify accepts."""
    other = await aiohttp_server(recording_discharger(bakery.generate_key(), []))
    token = await two_party_token(
        client, admin_token, discharger_url, str(other.make_url("")), "user-is alice"
    )

    result = await run(
        cli_env,
        token,
        "--url",
        str(server.make_url("")),
        "--user",
        "alice",
        "--password-stdin",
        "--no-verify",
        stdin=ALICE_PASSWORD.encode() + b"\n",
    )

    assert result.returncode == 0, result
    discharges = result.stdout.split()
    assert len(discharges) == 2
    verified = await client.post("/v1/verify", json={"token": token, "discharges": discharges})
    assert verified.status == 200, await verified.text()


async def test_a_refused_discharge_fails_cleanly(
    aiohttp_server: MakeServer,
    client: Client,
    server: TestServer,
    admin_token: str,
    users: dict[str, str],
    discharger_url: str,
    cli_env: dict[str, str],
) -> None:
    """A condition alice cannot meet exits non-zero with one `Error:` line carrying tokensvc's reason."""
    other = await aiohttp_server(recording_discharger(bakery.generate_key(), []))
    token = await two_party_token(
        client, admin_token, discharger_url, str(other.make_url("")), "user-is bob"
    )
    store_login(cli_env, str(server.make_url("")), await login(client, "alice", ALICE_PASSWORD))

    result = await run(cli_env, token)

    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result
    assert "refused" in errors[0] and "not 'bob'" in errors[0]


async def test_a_token_without_third_party_caveats_just_verifies(
    client: Client, server: TestServer, admin_token: str, cli_env: dict[str, str]
) -> None:
    """No caveats to discharge: the token is verified as it is, and the output says so."""
    token = await mint(client, admin_token, subject="alice")

    result = await run(cli_env, token, "--url", str(server.make_url("")))

    assert result.returncode == 0, result
    assert result.stdout.strip() == "valid: subject alice, 0 discharge(s)"


async def test_a_bad_token_fails_cleanly(cli_env: dict[str, str]) -> None:
    """Garbage instead of a token exits non-zero without a traceback."""
    result = await run(cli_env, "tsv1_garbage.00000000", "--url", "http://127.0.0.1:9")

    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    assert "Error:" in result.stderr


async def test_bearer_is_what_the_stored_login_sends(
    client: Client, users: dict[str, str], server: TestServer
) -> None:
    """The credentials helper sends the stored token to tokensvc's own locations only."""
    from tokensvc.cli.discharge import credentials_for

    token = await login(client, "alice", ALICE_PASSWORD)
    url = str(server.make_url(""))
    headers = credentials_for(url, basic=None, token=token)

    assert headers(url.rstrip("/") + "/bakery") == bearer(token)
    assert headers("http://elsewhere.example/bakery") == {}
    assert headers(url.rstrip("/") + "evil.example") == {}


def with_hostile_location(token: str, location: str) -> str:
    """`token` with a third-party caveat its holder added for `location` (no key needed)."""
    import secrets

    from tokensvc.macaroons import chain
    from tokensvc.macaroons.tokenformat import decode_token, encode_token

    macaroon = chain.add_third_party(
        decode_token(token, max_bytes=1 << 16, max_caveats=128),
        caveat_key=secrets.token_bytes(32),
        caveat_id=b"anything",
        location=location.encode(),
        nonce=secrets.token_bytes(24),
    )
    return encode_token(macaroon)


@pytest.mark.parametrize("tail", ["#", "?", "/x/..#"])
async def test_a_location_cannot_turn_the_discharge_into_an_admin_call(
    client: Client,
    server: TestServer,
    admin_token: str,
    users: dict[str, str],
    cli_env: dict[str, str],
    tail: str,
) -> None:
    """Red team (helper-63): a caveat located at `{service}/v1/subjects/bob/revoke-all#` made
    the CLI POST `{location}/discharge` with the admin's stored login, and the fragment cut the
    `/discharge` off: bob's tokens were revoked, audited as the admin. Such a location is not
    a plain URL: the command refuses it and sends nothing."""
    bobs = await mint(client, admin_token, subject="bob")
    base = str(server.make_url("")).rstrip("/")
    token = with_hostile_location(
        await mint(client, admin_token, subject="alice"), f"{base}/v1/subjects/bob/revoke-all{tail}"
    )
    store_login(cli_env, base, admin_token)

    result = await run(cli_env, token)

    verified = await client.post("/v1/verify", json={"token": bobs})
    assert verified.status == 200, await verified.text()
    assert result.returncode != 0, result
    assert "is not a plain HTTP URL" in result.stderr


def test_credentials_go_to_the_discharger_itself_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not to another path of the service, another port, a user name, a query or a fragment;
    `TOKENSVC_BAKERY_PREFIX` names another prefix, and set empty it is the default, as the
    server reads it (review, helper-72: the bare service URL got the credentials)."""
    from tokensvc.cli.discharge import credentials_for

    monkeypatch.setenv("TOKENSVC_BAKERY_PREFIX", "")

    headers = credentials_for("http://127.0.0.1:8080/", basic=None, token="T")

    assert headers("http://127.0.0.1:8080/bakery") == {"Authorization": "Bearer T"}
    for location in (
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8080/v1/keys/rotate",
        "http://127.0.0.1:8080/bakery?",
        "http://127.0.0.1:8080/bakery#",
        "http://127.0.0.1:8080/bakery/..",
        "http://127.0.0.1:8081/bakery",
        "http://admin@127.0.0.1:8080/bakery",
        "http://127.0.0.1:8080/bakery%2Fx",
    ):
        assert headers(location) == {}, location
    # Red team (helper-74): over plain http to another machine only when allowed, as for
    # every other command.
    from tokensvc.cli.errors import InsecureUrl

    remote = credentials_for("http://tokens.example", basic=("alice", "pw"), token=None)
    with pytest.raises(InsecureUrl):
        remote("http://tokens.example/bakery")
    monkeypatch.setenv("TOKENSVC_BAKERY_PREFIX", "/auth/bakery")
    moved = credentials_for("http://127.0.0.1:8080/", basic=None, token="T")
    assert moved("http://127.0.0.1:8080/auth/bakery") == {"Authorization": "Bearer T"}
    assert moved("http://127.0.0.1:8080/bakery") == {}
