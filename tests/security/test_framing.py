"""HTTP framing attacks on the production shape: one connection's bytes, in order, once each.

Hole B3 (issue 15): with the request lane on, a body sent in its own TCP segment was sometimes
parsed before its headers, and a body that was itself a request was answered as one, leaving
the client's next request swallowed: response-queue poisoning behind any proxy that reuses
upstream connections. These tests send requests cut into TCP segments (TCP_NODELAY, a pause
between the sends) to `tokensvc serve --workers 2` with Redis — fast verify and lane on — on
SQLite and on PostgreSQL, and hold every answer to the request it must answer: its status and
body, and the X-Request-ID the request carried. The last request of every connection asks for
`Connection: close`, so that the bytes up to the close hold exactly the answers expected and no
other. Only the served port is used, so the tests hold for any process layout behind it.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import ADMIN_PASSWORD
from tests.security.served_shape import (
    Answer,
    Connection,
    Request,
    Served,
    json_request,
    own_database,
    own_redis_prefix,
    request,
    serving,
)

# Concurrent clients: enough to keep every process of the shape busy at once.
CLIENTS = 6
CLOSE = (("Connection", "close"),)

# Hundreds of requests against three processes on a shared 2-core host: alone, after the rest.
pytestmark = pytest.mark.serial


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`tokensvc serve --workers 2` with Redis, on a database and Redis prefix of its own; one
    per database for the whole module, as a start costs seconds on a loaded host."""
    tmp_path = tmp_path_factory.mktemp("served")
    with (
        own_database(request.param, tmp_path) as database,
        own_redis_prefix() as prefix,
        serving(tmp_path, database, prefix) as shape,
    ):
        yield shape


# ---- what is sent, and what must come back -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Exchange:
    """A request and the answer it must get: its status and a check of its JSON body."""

    req: Request
    status: int
    check: Callable[[Any], bool]


def problem(sent: Exchange, got: Answer) -> str | None:
    """What is wrong with `got` as the answer to `sent`, or None."""
    if got.rid != sent.req.rid:
        return f"{sent.req.rid}: got the answer to {got.rid!r}: {got.status} {got.body[:100]!r}"
    try:
        ok = got.status == sent.status and sent.check(got.json())
    except (ValueError, KeyError, TypeError):
        ok = False
    return None if ok else f"{sent.req.rid}: {got.status} {got.body[:150]!r}"


def rid(label: str) -> str:
    return f"{label}-{secrets.token_hex(4)}"


def login(user: str, password: str, *, close: bool = False) -> Exchange:
    req = json_request(
        "POST",
        "/v1/login",
        rid("login"),
        {"username": user, "password": password},
        headers=CLOSE if close else (),
    )
    return Exchange(req, 200, lambda body: body["subject"] == user and bool(body["token"]))


def mint(admin: str, subject: str, *, service: bool = False, close: bool = False) -> Exchange:
    payload: dict[str, Any] = {"subject": subject, "ttl": "10m"}
    if service:
        payload["service"] = True
    req = json_request(
        "POST", "/v1/tokens", rid("mint"), payload, token=admin, headers=CLOSE if close else ()
    )
    return Exchange(req, 201, lambda body: body["subject"] == subject)


def listing(admin: str, *, close: bool = False) -> Exchange:
    headers = [("Authorization", f"Bearer {admin}"), *(CLOSE if close else ())]
    req = request("GET", "/v1/tokens?limit=2", rid("list"), headers=headers)
    return Exchange(req, 200, lambda body: isinstance(body["tokens"], list))


def healthz(*, close: bool = False) -> Exchange:
    req = request("GET", "/healthz", rid("healthz"), headers=CLOSE if close else ())
    return Exchange(req, 200, lambda body: body["status"] == "ok")


def verify(token: str, subject: str, *, close: bool = False) -> Exchange:
    req = json_request(
        "POST", "/v1/verify", rid("verify"), {"token": token}, headers=CLOSE if close else ()
    )
    return Exchange(req, 200, lambda body: body["valid"] is True and body["subject"] == subject)


def exchange(served: Served, sent: Sequence[Exchange], cuts: Sequence[int] = ()) -> list[str]:
    """Send the requests of `sent` back to back on one new connection, cut into segments at the
    offsets `cuts`; what is wrong with the answers (in order, one each, nothing more)."""
    data = b"".join(s.req.raw for s in sent)
    found: list[str | None] = []
    try:
        with Connection(served) as conn:
            conn.send_split(data, cuts)
            for s in sent:
                found.append(problem(s, conn.answer()))
            rest = conn.rest()  # the last request asked for the connection to close
            if rest:
                found.append(f"{sent[-1].req.rid}: bytes after the last answer: {rest[:150]!r}")
    except (OSError, EOFError) as exc:
        found.append(f"{sent[0].req.rid}…: after {len(found)} answers, {exc!r}")
    return [f"{p} (cut at {list(cuts)})" for p in found if p is not None]


def summary(found: list[str]) -> str:
    return f"{len(found)} wrong: " + "\n".join(found[:8])


def in_clients(work: Callable[[int], list[str]]) -> list[str]:
    """Run work(0) … work(CLIENTS - 1) at once, each in its own thread; all their problems."""
    with ThreadPoolExecutor(CLIENTS) as pool:
        return [p for found in pool.map(work, range(CLIENTS)) for p in found]


@dataclasses.dataclass(frozen=True)
class Accounts:
    admin: str  # an admin token
    users: list[tuple[str, str]]  # one (name, password) per client: no two log in at once


@pytest.fixture(scope="module")
def accounts(served: Served) -> Accounts:
    return make_accounts(served)


def make_accounts(served: Served) -> Accounts:
    """An admin token, and a user per client, made through the API."""
    with Connection(served) as conn:
        conn.send(login("admin", ADMIN_PASSWORD).req.raw)
        answer = conn.answer()
        assert answer.status == 200, answer.body
        admin = str(answer.json()["token"])
        users = [(f"framing{i}", secrets.token_urlsafe(16)) for i in range(CLIENTS)]
        for name, password in users:
            conn.send(
                json_request(
                    "POST",
                    "/v1/users",
                    rid("user"),
                    {"name": name, "password": password},
                    token=admin,
                ).raw
            )
            answer = conn.answer()
            assert answer.status == 201, answer.body
    return Accounts(admin, users)


def head_end(req: Request) -> int:
    return len(req.head)


# ---- headers and body in separate segments -------------------------------------------------------


def test_bodies_sent_apart_from_their_headers_are_never_read_out_of_order(
    served: Served, accounts: Accounts
) -> None:
    """Logins and admin calls whose body follows their headers in a second segment, 300 of them
    from 6 clients at once, each get their own answer, and the connection's next request its
    own: no body is ever parsed before its headers."""
    rounds = 50

    def client(i: int) -> list[str]:
        user, password = accounts.users[i]
        found = []
        for n in range(rounds):
            first = login(user, password) if n % 2 else mint(accounts.admin, f"sub{i}-{n}")
            found += exchange(served, [first, healthz(close=True)], [head_end(first.req)])
        return found

    found = in_clients(client)

    assert not found, summary(found)


def test_a_body_that_is_a_request_is_never_answered_as_one(
    served: Served, accounts: Accounts
) -> None:
    """A POST whose body, in its own segment, is itself a request gets exactly one answer, its
    own, and the next request on the connection gets its own answer: 120 times from 6 clients
    at once, the smuggled request is never answered and no later answer is shifted."""
    rounds = 20

    def client(i: int) -> list[str]:
        user, password = accounts.users[i]
        smuggled = [
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            login(user, password).req.raw,  # answered, it would hand out a token
        ]
        found = []
        for n in range(rounds):
            body = smuggled[n % 2]
            # Not JSON: refused 400 before any password is checked, so no lockout counts.
            carrier = request("POST", "/v1/login", rid("carrier"), body=body)
            sent = [Exchange(carrier, 400, lambda b: b["error"]["code"] == "bad_request")]
            sent.append(listing(accounts.admin, close=True))
            found += exchange(served, sent, [head_end(carrier)])
        return found

    found = in_clients(client)

    assert not found, summary(found)


# ---- pipelining ----------------------------------------------------------------------------------


def boundaries(requests: Sequence[Request]) -> list[int]:
    """The offsets worth cutting a pipeline of `requests` at: around where each starts, its
    request line ends, its headers end and its body is halfway, and where it ends."""
    cuts = set()
    start = 0
    for req in requests:
        line_end = req.head.index(b"\r\n")
        for offset in (
            0,
            line_end,
            len(req.head) - 2,
            len(req.head),
            len(req.head) + len(req.body) // 2,
        ):
            cuts.update((start + offset - 1, start + offset, start + offset + 1))
        start += len(req.raw)
    return sorted(c for c in cuts if 0 < c < start)


def test_pipelined_requests_cut_at_every_boundary_are_answered_in_order_once_each(
    served: Served, accounts: Accounts
) -> None:
    """A verify, a login, an admin mint, an admin listing, a health check and a verify sent
    back to back, in one segment and cut in two at each boundary of interest (and once at all
    of them), get one answer each, in order."""
    admin = accounts.admin

    def pipeline(i: int) -> list[Exchange]:
        user, password = accounts.users[i]
        return [
            verify(admin, "admin"),
            login(user, password),
            mint(admin, f"piped{i}"),
            listing(admin),
            healthz(),
            verify(admin, "admin", close=True),
        ]

    cuts = boundaries([e.req for e in pipeline(0)])
    # The same request shapes for every client, so one set of offsets fits all of them.
    assert all(boundaries([e.req for e in pipeline(i)]) == cuts for i in range(CLIENTS))
    splits: list[list[int]] = [[], cuts, *([c] for c in cuts)]

    def client(i: int) -> list[str]:
        found = []
        for split in splits[i::CLIENTS]:
            found += exchange(served, pipeline(i), split)
        return found

    found = in_clients(client)

    assert len(splits) > 50
    assert not found, summary(found)


def test_a_first_request_cut_at_any_byte_is_answered_once_and_the_next_one_too(
    served: Served, accounts: Accounts
) -> None:
    """A login cut in two at every byte of its request line, headers and body (where the service
    decides which process serves a connection), followed by a health check, gets its answer and
    the health check its own."""
    length = len(login(*accounts.users[0]).req.raw)

    def client(i: int) -> list[str]:
        found = []
        for cut in range(1 + i, length, CLIENTS):
            sent = [login(*accounts.users[i]), healthz(close=True)]
            found += exchange(served, sent, [cut])
        return found

    found = in_clients(client)

    assert not found, summary(found)


# ---- bodies framed other ways, and a verify that needs the database ----------------------------


def test_a_verify_whose_root_key_must_be_read_keeps_its_body_and_its_place(
    served: Served, accounts: Accounts
) -> None:
    """Verifies of service tokens (each on its own root key, which no verifying process has in
    memory yet, so it is read from the database), cut between headers and body and inside the
    body, with more requests pipelined behind them, are answered valid and in order."""
    tokens = []
    with Connection(served) as conn:
        for n in range(2 * CLIENTS):
            sent = mint(accounts.admin, f"service{n}", service=True)
            conn.send(sent.req.raw)
            answer = conn.answer()
            assert problem(sent, answer) is None
            tokens.append((str(answer.json()["token"]), f"service{n}"))

    def client(i: int) -> list[str]:
        found = []
        for token, subject in tokens[i::CLIENTS]:
            first = verify(token, subject)
            cuts = [head_end(first.req), head_end(first.req) + len(first.req.body) // 2]
            sent = [first, verify(token, subject), healthz(close=True)]
            found += exchange(served, sent, cuts)
        return found

    found = in_clients(client)

    assert not found, summary(found)


def test_a_body_sent_after_100_continue_is_read_as_that_requests_body(
    served: Served, accounts: Accounts
) -> None:
    """Logins and verifies that wait for 100 Continue before sending their body (as curl does
    for larger bodies) get that interim answer, then their own, and the connection's next
    request its own."""
    rounds = 4

    def client(i: int) -> list[str]:
        found = []
        for n in range(rounds):
            sent = login(*accounts.users[i]) if n % 2 else verify(accounts.admin, "admin")
            head = sent.req.head[:-2] + b"Expect: 100-continue\r\n\r\n"
            after = healthz(close=True)
            with Connection(served) as conn:
                conn.send(head)
                interim = conn.answer()
                conn.send(sent.req.body, after.req.raw)
                found += [problem(sent, conn.answer()), problem(after, conn.answer())]
                rest = conn.rest()
            if interim.status != 100:
                found.append(f"{sent.req.rid}: {interim.status} {interim.body[:100]!r} first")
            if rest:
                found.append(f"{sent.req.rid}: bytes after the last answer: {rest[:150]!r}")
        return [p for p in found if p is not None]

    found = in_clients(client)

    assert not found, summary(found)


def chunked(req: Request, sizes: Sequence[int]) -> tuple[Request, list[int]]:
    """`req` with its body sent chunked, in chunks of `sizes` (then the rest, then the last
    chunk); and cuts that put each chunk-size line and each chunk's data in separate segments."""
    head = re.sub(rb"Content-Length: \d+\r\n", b"Transfer-Encoding: chunked\r\n", req.head)
    body, cuts, rest = b"", [len(head)], req.body
    for size in [*sizes, len(rest) - sum(sizes)]:
        chunk, rest = rest[:size], rest[size:]
        body += f"{len(chunk):x}\r\n".encode()
        cuts.append(len(head) + len(body))
        body += chunk + b"\r\n"
        cuts.append(len(head) + len(body))
    return Request(req.rid, head, body + b"0\r\n\r\n"), cuts


def test_chunked_bodies_cut_across_segments_keep_their_framing(
    served: Served, accounts: Accounts
) -> None:
    """Mints and logins whose bodies come chunked, every chunk-size line and chunk in its own
    segment and chunks full of CR LF (JSON white space) that look like the end of a request, get
    their answers, and the connection's next request its own."""
    rounds = 6

    def client(i: int) -> list[str]:
        user, password = accounts.users[i]
        found = []
        for n in range(rounds):
            sent = mint(accounts.admin, f"chunked{i}-{n}") if n % 2 else login(user, password)
            spaced = sent.req.body.replace(b", ", b",\r\n\r\n")
            req, cuts = chunked(dataclasses.replace(sent.req, body=spaced), [1, 7, 3])
            first = dataclasses.replace(sent, req=req)
            found += exchange(served, [first, healthz(close=True)], cuts)
        return found

    found = in_clients(client)

    assert not found, summary(found)


@pytest.mark.parametrize(
    "framing",
    [
        [("Transfer-Encoding", "chunked")],  # and the Content-Length every request here has
        [("Content-Length", "5")],  # a second, different length
        [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "identity")],
    ],
    ids=["length-and-chunked", "two-lengths", "chunked-then-identity"],
)
def test_a_request_framed_two_ways_is_refused_with_nothing_behind_it_answered(
    served: Served, accounts: Accounts, framing: list[tuple[str, str]]
) -> None:
    """A request whose headers frame its body two ways (the classic smuggling vectors), sent
    apart from its body, is refused 400 and its connection closed: the request hidden in its
    body, for whichever framing reads it as a request, is never answered."""
    hidden = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + hidden  # chunked: empty, then a request; by its length: one body
    answers = []

    for path in ("/v1/login", "/v1/tokens"):
        headers = [*framing, ("Authorization", f"Bearer {accounts.admin}")]
        carrier = request("POST", path, rid("both"), body=body, headers=headers)
        with Connection(served) as conn:
            conn.send(carrier.head, body)
            answers.append((conn.answer(), conn.rest()))

    assert [answer.status for answer, _ in answers] == [400, 400], answers
    # Not the hidden /healthz's {"status": "ok"}, and nothing after the refusal.
    assert all(b'"status"' not in answer.body for answer, _ in answers), answers
    assert [rest for _, rest in answers] == [b"", b""]
