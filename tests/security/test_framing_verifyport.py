"""The framing attacks of test_framing, against the verify listener of the production shape.

`tokensvc serve --workers 2` with Redis runs the verify listener (tokensvc.web.verifyport) in two
processes sharing its port, apart from the API's. Its parser is llhttp through httptools, and its
answers are made in the parser's callbacks or, for a root key to read, in a task whose answer the
connection's later answers wait for. These tests send it verifies cut into TCP segments, bodies
that are themselves requests, pipelines cut at every boundary, 100 Continue, chunked bodies and
requests framed two ways, and hold every answer to the request it must answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from tests.security.served_shape import (
    Connection,
    Served,
    own_database,
    own_redis_prefix,
    request,
    serving,
)
from tests.security.test_framing import (
    CLIENTS,
    Accounts,
    Exchange,
    boundaries,
    chunked,
    exchange,
    head_end,
    healthz,
    in_clients,
    make_accounts,
    mint,
    problem,
    rid,
    summary,
    verify,
)

pytestmark = pytest.mark.serial


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shape(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    tmp_path = tmp_path_factory.mktemp("served")
    with (
        own_database(request.param, tmp_path) as database,
        own_redis_prefix() as prefix,
        serving(tmp_path, database, prefix) as served,
    ):
        yield served


@pytest.fixture(scope="module")
def accounts(shape: Served) -> Accounts:
    return make_accounts(shape)


@pytest.fixture(scope="module")
def tokens(shape: Served, accounts: Accounts) -> list[tuple[str, str]]:
    """One token per client, minted through the API: (token, subject)."""
    out = []
    with Connection(shape) as conn:
        for i in range(CLIENTS):
            sent = mint(accounts.admin, f"vp{i}")
            conn.send(sent.req.raw)
            answer = conn.answer()
            assert problem(sent, answer) is None
            out.append((str(answer.json()["token"]), f"vp{i}"))
    return out


@pytest.fixture(scope="module")
def served(shape: Served) -> Served:
    return shape.on_verify_port()


def invalid(token: str) -> Exchange:
    req = request("POST", "/v1/verify", rid("bad"), body=b'{"token": "' + token.encode() + b'"}')
    return Exchange(req, 401, lambda body: body["valid"] is False)


def test_bodies_sent_apart_from_their_headers_are_never_read_out_of_order(
    served: Served, tokens: list[tuple[str, str]]
) -> None:
    rounds = 50

    def client(i: int) -> list[str]:
        found = []
        for _ in range(rounds):
            first = verify(*tokens[i])
            found += exchange(served, [first, healthz(close=True)], [head_end(first.req)])
        return found

    found = in_clients(client)
    assert not found, summary(found)


def test_a_body_that_is_a_request_is_never_answered_as_one(
    served: Served, tokens: list[tuple[str, str]]
) -> None:
    rounds = 20

    def client(i: int) -> list[str]:
        smuggled = [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", verify(*tokens[i]).req.raw]
        found = []
        for n in range(rounds):
            carrier = request("POST", "/v1/verify", rid("carrier"), body=smuggled[n % 2])
            sent = [Exchange(carrier, 400, lambda b: b["error"]["code"] == "bad_request")]
            sent.append(verify(*tokens[i], close=True))
            found += exchange(served, sent, [head_end(carrier)])
        return found

    found = in_clients(client)
    assert not found, summary(found)


def test_pipelined_requests_cut_at_every_boundary_are_answered_in_order_once_each(
    served: Served, accounts: Accounts, tokens: list[tuple[str, str]]
) -> None:
    def pipeline(i: int) -> list[Exchange]:
        return [
            verify(accounts.admin, "admin"),
            verify(*tokens[i]),
            invalid(tokens[i][0][:-1]),
            healthz(),
            verify(*tokens[i], close=True),
        ]

    cuts = boundaries([e.req for e in pipeline(0)])
    assert all(boundaries([e.req for e in pipeline(i)]) == cuts for i in range(CLIENTS))
    splits: list[list[int]] = [[], cuts, *([c] for c in cuts)]

    def client(i: int) -> list[str]:
        found = []
        for split in splits[i::CLIENTS]:
            found += exchange(served, pipeline(i), split)
        return found

    found = in_clients(client)
    assert len(splits) > 40
    assert not found, summary(found)


def test_a_first_request_cut_at_any_byte_is_answered_once_and_the_next_one_too(
    served: Served, tokens: list[tuple[str, str]]
) -> None:
    length = len(verify(*tokens[0]).req.raw)

    def client(i: int) -> list[str]:
        found = []
        for cut in range(1 + i, length, CLIENTS):
            found += exchange(served, [verify(*tokens[i]), healthz(close=True)], [cut])
        return found

    found = in_clients(client)
    assert not found, summary(found)


def test_a_verify_whose_root_key_must_be_read_keeps_its_body_and_its_place(
    shape: Served, served: Served, accounts: Accounts
) -> None:
    """Service tokens (each on its own root key, which no verify process has in memory yet):
    the verify becomes a task, and the answers pipelined behind it wait for its answer."""
    service_tokens = []
    with Connection(shape) as conn:
        for n in range(2 * CLIENTS):
            sent = mint(accounts.admin, f"vpservice{n}", service=True)
            conn.send(sent.req.raw)
            answer = conn.answer()
            assert problem(sent, answer) is None
            service_tokens.append((str(answer.json()["token"]), f"vpservice{n}"))

    def client(i: int) -> list[str]:
        found = []
        for token, subject in service_tokens[i::CLIENTS]:
            first = verify(token, subject)
            cuts = [head_end(first.req), head_end(first.req) + len(first.req.body) // 2]
            sent = [first, verify(accounts.admin, "admin"), healthz(), verify(token, subject)]
            sent.append(healthz(close=True))
            found += exchange(served, sent, cuts)
        return found

    found = in_clients(client)
    assert not found, summary(found)


def test_a_body_sent_after_100_continue_is_read_as_that_requests_body(
    served: Served, tokens: list[tuple[str, str]]
) -> None:
    def client(i: int) -> list[str]:
        found: list[str | None] = []
        for _ in range(4):
            sent = verify(*tokens[i])
            head = sent.req.head[:-2] + b"Expect: 100-continue\r\n\r\n"
            after = healthz(close=True)
            with Connection(served) as conn:
                conn.send(head)
                interim = conn.answer()
                conn.send(sent.req.body, after.req.raw)
                found += [problem(sent, conn.answer()), problem(after, conn.answer())]
                rest = conn.rest()
            if interim.status != 100:
                found.append(f"{sent.req.rid}: {interim.status} first")
            if rest:
                found.append(f"{sent.req.rid}: bytes after the last answer: {rest[:150]!r}")
        return [p for p in found if p is not None]

    found = in_clients(client)
    assert not found, summary(found)


def test_chunked_bodies_cut_across_segments_keep_their_framing(
    served: Served, tokens: list[tuple[str, str]]
) -> None:
    def client(i: int) -> list[str]:
        found = []
        for _ in range(6):
            sent = verify(*tokens[i])
            spaced = sent.req.body.replace(b": ", b":\r\n\r\n ")
            req, cuts = chunked(dataclasses.replace(sent.req, body=spaced), [1, 7, 3])
            found += exchange(
                served, [dataclasses.replace(sent, req=req), healthz(close=True)], cuts
            )
        return found

    found = in_clients(client)
    assert not found, summary(found)


@pytest.mark.parametrize(
    "framing",
    [
        [("Transfer-Encoding", "chunked")],
        [("Content-Length", "5")],
        [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "identity")],
    ],
    ids=["length-and-chunked", "two-lengths", "chunked-then-identity"],
)
def test_a_request_framed_two_ways_is_refused_with_nothing_behind_it_answered(
    served: Served, framing: list[tuple[str, str]]
) -> None:
    hidden = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + hidden
    carrier = request("POST", "/v1/verify", rid("both"), body=body, headers=framing)
    with Connection(served) as conn:
        conn.send(carrier.head, body)
        answer, rest = conn.answer(), conn.rest()
    assert answer.status == 400, answer
    assert b'"status"' not in answer.body and rest == b""
