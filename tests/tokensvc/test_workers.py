"""`tokensvc serve --workers 2`: one port, several processes, metrics that add up across them."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ADMIN_PASSWORD
from tests.ports import free_port
from tests.tokensvc.test_cli_login import TOKENSVC, _clean_env

_HEALTHZ_COUNT = re.compile(
    r'^tokensvc_http_request_duration_seconds_count\{route="/healthz",status_class="2xx"\} (\S+)$',
    re.MULTILINE,
)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


@contextlib.contextmanager
def serving(
    tmp_path: Path, redis_url: str, redis_prefix: str, *args: str, settle: float = 0.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`tokensvc serve *args` on the embedded database and a private Redis prefix, answering
    /healthz (then `settle` s more); its base URL and process. Stopped with SIGTERM at the end."""
    port = free_port()
    env = _clean_env(tmp_path)
    env.update(
        TOKENSVC_DATA_DIR=str(tmp_path / "data"),
        TOKENSVC_REDIS_URL=redis_url,
        TOKENSVC_REDIS_PREFIX=redis_prefix,
        TOKENSVC_ADMIN_PASSWORD=ADMIN_PASSWORD,
        TOKENSVC_PASSWORD_PROFILE="CHEAP_FOR_TESTS",
        TOKENSVC_ALLOW_INSECURE="test-password-profile",
    )
    with (tmp_path / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [TOKENSVC, "serve", "--port", str(port), "--verify-port", str(free_port()), *args],
            env=env,
            stdout=log,
            stderr=log,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _get(base + "/healthz")
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("server did not start") from None
                    time.sleep(0.2)
            time.sleep(settle)
            yield base, proc
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def two_workers(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A two-worker server; 1 s after its first answer, so both workers are up."""
    with serving(tmp_path, redis_url, redis_prefix, "--workers", "2", settle=1.0) as served:
        yield served


FLUSH_SECONDS = 1.0  # tokensvc.web.app's _flushing interval


def _healthz_count(base: str) -> float:
    match = _HEALTHZ_COUNT.search(_get(base + "/metrics"))
    return float(match.group(1)) if match else 0.0


def test_metrics_add_up_across_workers(two_workers: tuple[str, subprocess.Popen[bytes]]) -> None:
    """Requests served by either worker all appear in one scrape's totals."""
    base, _ = two_workers
    # Each worker folds its request tallies into the shared metrics every second (and the one
    # scraped does so at once): let the start-up probes settle first.
    time.sleep(FLUSH_SECONDS + 0.5)
    before = _healthz_count(base)

    for _ in range(40):
        _get(base + "/healthz")

    deadline = time.monotonic() + 3 * FLUSH_SECONDS
    while _healthz_count(base) - before < 40 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _healthz_count(base) - before == 40


def test_workers_stop_cleanly_on_sigterm(two_workers: tuple[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM to the supervisor stops every worker and the supervisor exits 0."""
    base, proc = two_workers

    proc.terminate()
    code = proc.wait(timeout=20)

    assert code == 0
    with pytest.raises(OSError):  # noqa: PT011 - refused or reset, whichever the closed port gives
        _get(base + "/healthz")


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children]


def test_every_process_says_what_it_is(two_workers: tuple[str, subprocess.Popen[bytes]]) -> None:
    """In `ps`, the supervisor, the API process and each verify process name themselves
    (setproctitle), instead of `python -c from multiprocessing.spawn import …`."""
    base, proc = two_workers
    port = base.rsplit(":", 1)[1]

    def title(pid: int) -> str:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()

    titles = sorted(title(pid) for pid in _children(proc.pid) if "tokensvc" in title(pid))

    assert title(proc.pid) == "tokensvc: supervisor"
    assert titles[0] == f"tokensvc: api :{port}"
    assert len(titles) == 3
    assert all(t.startswith("tokensvc: verify :") for t in titles[1:])


def test_no_answer_names_the_server_software_or_its_version(
    two_workers: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """`Server: tokensvc`, not `Python/3.11 aiohttp/3.14.5`, on an answer, a 404 and an error."""
    base, _ = two_workers
    for path in ("/healthz", "/nope"):
        try:
            with urllib.request.urlopen(base + path, timeout=10) as resp:
                server = resp.headers["Server"]
        except urllib.error.HTTPError as exc:
            server = exc.headers["Server"]
        assert server == "tokensvc", path
