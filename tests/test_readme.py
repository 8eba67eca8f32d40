"""The README's "A first token" examples run as written, after its quick start.

A fresh user: an empty home, no TOKENSVC_* variables, the virtualenv's bin NOT on PATH (the
README's `source .venv/bin/activate` must put it there), in a directory holding `.venv` as a
clone does after `./dev run`. The service is started as `./dev run` starts it (`tokensvc serve`,
no configuration: it generates the admin password and prints it once); the test reads that
password from the service's output and types it at the `tokensvc login admin` prompt through a
pseudo-terminal, as a person would. Only the port differs from the README (127.0.0.1:8080 may be
taken on a shared machine): it is replaced in the text before the blocks run.

Run with `-s` to see the transcript.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.ports import free_port
from tests.tokensvc.test_cli_login import http

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TOKENSVC = str(Path(sys.executable).with_name("tokensvc"))
SECTION = "### A first token"


def readme_blocks() -> list[str]:
    """The fenced `sh` blocks of the README's "A first token" section, in order."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start)
    blocks = re.findall(r"^```sh\n(.*?)^```", text[start:end], flags=re.DOTALL | re.MULTILINE)
    assert blocks, f"no ```sh blocks under {SECTION!r}"
    return blocks


def _fresh_env(home: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TOKENSVC_", "XDG_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p and p != venv_bin
    )
    env.update(HOME=str(home), TERM="dumb", PYTHONUNBUFFERED="1")
    return env


def _set_controlling_terminal() -> None:
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_in_terminal(
    script: Path, *, cwd: Path, env: dict[str, str], answers: dict[str, str]
) -> tuple[int, str]:
    """Run `bash -e script` on a pseudo-terminal; answer each prompt in `answers` once."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        ["bash", "-e", str(script)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=env,
        start_new_session=True,
        # The terminal must be the controlling one: getpass (the password prompt) opens /dev/tty.
        preexec_fn=_set_controlling_terminal,  # noqa: PLW1509 - no threads in the child before exec
    )
    os.close(slave)
    output = b""
    pending = dict(answers)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every process holding the terminal is gone
                    break
                if not chunk:
                    break
                output += chunk
                for prompt in list(pending):
                    if output.rstrip().endswith(prompt.encode()):
                        os.write(master, pending.pop(prompt).encode() + b"\n")
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
        returncode = proc.wait(timeout=30)
    finally:
        os.close(master)
    return returncode, output.decode("utf-8", "replace").replace("\r\n", "\n")


def test_the_readme_first_token_examples_run_as_written(tmp_path: Path) -> None:
    """After the quick start, the README's "A first token" blocks run in a fresh shell: login at
    the prompt, a minted token that /v1/verify (curl) accepts for read and `token verify` denies
    for write, `auth status`, and a --local mint; exit status 0."""
    home = tmp_path / "home"
    clone = tmp_path / "clone"
    home.mkdir()
    clone.mkdir()
    (clone / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = _fresh_env(home)
    server_log = tmp_path / "server.log"
    # A free port is free when picked, not when bound (the verify port is the next one): a
    # parallel test may take one first, so a start that loses that race is tried again.
    for _attempt in range(3):
        port = free_port()
        with server_log.open("wb") as log:
            server = subprocess.Popen(
                [TOKENSVC, "serve", "--port", str(port)],
                env=env,
                cwd=clone,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if _started(server, server_log):
            break
        shutil.rmtree(home / ".local", ignore_errors=True)  # a data dir the lost start made
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        password = None
        while password is None or not _healthy(url):
            assert server.poll() is None and time.monotonic() < deadline, server_log.read_text()
            found = re.search(r"created user 'admin' with password: (\S+)", server_log.read_text())
            password = found.group(1) if found else None
            time.sleep(0.1)
        blocks = readme_blocks()
        script = tmp_path / "readme.sh"
        script.write_text(
            _echoing("\n".join(blocks).replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
        )

        returncode, transcript = run_in_terminal(
            script, cwd=clone, env=env, answers={"Password:": password}
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    print(f"\n---- README 'A first token', run against {url} ----\n{transcript}")
    assert returncode == 0, transcript
    assert "Traceback" not in transcript
    assert password not in transcript  # typed at a prompt that does not echo
    assert f"logged in to {url} as admin until" in transcript
    assert "caveat: subject subject=alice" in transcript
    assert "caveat: operations operations=read" in transcript
    assert '{"valid":true,"subject":"alice",' in transcript
    assert "denied: exit status 1" in transcript
    assert "* admin" in transcript
    assert re.search(r"^tsv1_[A-Za-z0-9_-]{40,}\.[0-9a-f]{8}$", transcript, flags=re.MULTILINE)


def _echoing(script: str) -> str:
    """`script` with each command line shown before it runs, `$ ` first, as in a terminal."""
    lines = []
    for line in script.splitlines():
        if line.strip():
            lines.append(f"printf '%s\\n' {shlex.quote('$ ' + line)}")
        lines.append(line)
    return "\n".join(lines) + "\n"


def _started(server: subprocess.Popen[bytes], log: Path) -> bool:
    """Wait until `tokensvc serve` listens on both its ports; False if it lost a port race."""
    deadline = time.monotonic() + 60
    while "Running on" not in log.read_text():
        if server.poll() is not None:
            text = log.read_text()
            assert "already in use" in text, text
            return False
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return True


def _healthy(url: str) -> bool:
    try:
        return http("GET", url + "/healthz")[0] == 200
    except OSError:
        return False
