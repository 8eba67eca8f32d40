"""A real nginx (Debian's package) with `auth_request` to /v1/auth protects a location.

nginx is started by the test on a loopback port with a generated configuration in a temporary
directory; tokensvc runs in-process on another loopback port. When nginx is missing it is installed
with apt-get if we are root; otherwise the test fails with a message, never skips.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth
from tests.ports import free_port
from tokensvc.web.app import create_app
from tokensvc.web.handlers import forwardauth

if TYPE_CHECKING:
    from tokensvc.operations.config import Config

SECRET_BODY = "the protected page\n"


def _find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    """Debian's nginx, installed with apt-get when missing and we are root."""
    found = _find_nginx()
    if found is None:
        if os.geteuid() != 0:
            pytest.fail(
                "nginx is not installed and the tests are not running as root to install it; "
                "run `apt-get install -y nginx-light` first"
            )
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        command = ["apt-get", "install", "-y", "--no-install-recommends", "nginx-light"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        found = _find_nginx()
        if found is None:
            pytest.fail(f"could not install nginx-light with apt-get:\n{done.stderr[-2000:]}")
    version = subprocess.run([found, "-V"], capture_output=True, text=True, check=False).stderr
    if "http_auth_request_module" not in version:
        pytest.fail(f"{found} was built without the auth_request module:\n{version}")
    return found


def nginx_conf(
    root: Path, *, port: int, tokensvc_port: int, backend_port: int | None = None
) -> str:
    """A self-contained configuration: everything under `root`, no default site, no /var paths;
    with `backend_port`, /app/ is also protected and proxied there, the URI passed on as sent
    (`proxy_pass` without a URI part, as docs/forward-auth.md's example does)."""
    backend = (
        f"""
        location /app/ {{
            auth_request /_tokensvc_auth;
            proxy_pass http://127.0.0.1:{backend_port};
        }}"""
        if backend_port
        else ""
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {root / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    return f"""{user}worker_processes 1;
error_log {root / "error.log"} info;
events {{ worker_connections 64; }}
http {{
    access_log {root / "access.log"};
{temp}
    uwsgi_temp_path {root / "uwsgi"};
    scgi_temp_path {root / "scgi"};
    server {{
        listen 127.0.0.1:{port};
        root {root / "www"};

        location = /_tokensvc_auth {{
            internal;
            proxy_pass http://127.0.0.1:{tokensvc_port}/v1/auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Original-URI $request_uri;
            # nginx passes the client's own headers on: clear the context it must not choose.
            proxy_set_header X-Auth-Operation "";
            proxy_set_header X-Auth-Audience "";
            proxy_set_header X-Auth-Require-MFA "";
        }}

        location /protected/ {{
            auth_request /_tokensvc_auth;
            auth_request_set $auth_subject $upstream_http_x_auth_subject;
            add_header X-Seen-Subject $auth_subject always;
        }}{backend}
    }}
}}
"""


@pytest.fixture
def nginx_root(tmp_path: Path) -> Path:
    """The nginx prefix: a static protected page and the temp directories."""
    root = tmp_path / "nginx"
    (root / "www" / "protected").mkdir(parents=True)
    (root / "www" / "protected" / "index.html").write_text(SECRET_BODY)
    return root


@pytest.fixture
def nginx_port() -> int:
    return free_port()


@pytest.fixture
def run_nginx(nginx_binary: str, nginx_root: Path, nginx_port: int) -> Iterator[Any]:
    """A function starting nginx in front of a given tokensvc port; stopped after the test."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(tokensvc_port: int, backend_port: int | None = None) -> None:
        conf = nginx_root / "nginx.conf"
        conf.write_text(
            nginx_conf(
                nginx_root, port=nginx_port, tokensvc_port=tokensvc_port, backend_port=backend_port
            )
        )
        command = [
            nginx_binary,
            "-e", str(nginx_root / "error.log"),
            "-p", str(nginx_root),
            "-c", str(conf),
            "-g", f"daemon off; pid {nginx_root / 'nginx.pid'};",
        ]  # fmt: skip
        with (nginx_root / "stdout.log").open("wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        processes.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                output = (nginx_root / "stdout.log").read_text(errors="replace")
                pytest.fail(f"nginx exited with {proc.returncode}:\n{output}")
            try:
                socket.create_connection(("127.0.0.1", nginx_port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail("nginx did not start listening within 10 s")

    try:
        yield start
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def test_nginx_auth_request_protects_a_location(
    aiohttp_client: Any, pg_config: Config, clock: FakeClock, run_nginx: Any, nginx_port: int
) -> None:
    """Through nginx: 200 with a valid token, 401 without, 403 when its operations exclude POST."""
    app = create_app(pg_config, clock=clock)
    if not any(r.canonical == "/v1/auth" for r in app.router.resources()):
        forwardauth.setup(app)
    tokensvc = await aiohttp_client(app)
    login = await tokensvc.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    admin_token = (await login.json())["token"]
    minted = await tokensvc.post(
        "/v1/tokens",
        json={"subject": "reader", "operations": ["read"]},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    read_only = (await minted.json())["token"]
    run_nginx(tokensvc.port)
    url = f"http://127.0.0.1:{nginx_port}/protected/index.html"

    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Authorization": f"Bearer {read_only}"}) as ok:
            ok_status, ok_body = ok.status, await ok.text()
            subject = ok.headers.get("X-Seen-Subject")
        async with session.get(url) as anonymous:
            anonymous_status = anonymous.status
        async with session.get(url, headers={"Authorization": "Bearer garbage"}) as bad:
            bad_status = bad.status
        async with session.post(url, headers={"Authorization": f"Bearer {read_only}"}) as denied:
            denied_status, denied_body = denied.status, await denied.text()

    assert (ok_status, ok_body, subject) == (200, SECRET_BODY, "reader")
    assert anonymous_status == 401
    assert bad_status == 401
    assert denied_status == 403
    assert SECRET_BODY not in denied_body
