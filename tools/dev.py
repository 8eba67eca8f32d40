"""The developer tasks behind ./dev: run, test, check, lock, bench (`./dev help`).

Standard library only: it runs on the system Python before .venv exists, creates .venv and keeps
it installed from pyproject.toml with the exact versions of requirements-lock.txt (pip
constraints; uv installs where it can be had, else pip), and for the tests finds or starts
PostgreSQL and Redis. Everything runs from the repository root; the tools themselves (pytest,
ruff, mypy, lint-imports, uv) run inside .venv.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NoReturn

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
VPY = VENV / "bin" / "python"
# What was last installed: "<hash of the install inputs> <extras...>".
STAMP = VENV / ".dev-install-stamp"
# Exact versions of every dependency (all extras, all platforms), written by `./dev lock`.
LOCK = "requirements-lock.txt"
# The files that define the installation: a change to any of them reinstalls.
INSTALL_INPUTS = ("pyproject.toml", LOCK, "tokensvc/_speedups.c", "setup.cfg", "setup.py")

DEFAULT_TEST_PG = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_TEST_REDIS = "redis://127.0.0.1:6379/0"
IS_ROOT = os.geteuid() == 0

USAGE = """\
usage: ./dev <command> [args...]

commands:
  run [args]     install the project into .venv if needed, then `tokensvc serve [args]`
                 (embedded SQLite, 127.0.0.1:8080, no configuration needed)
  test [args]    install .[test] into .venv if needed, make sure a PostgreSQL and a Redis
                 are reachable (starting throwaway ones if not), then `pytest [args]`
                 (in one pytest-xdist worker per core, then the tests marked `serial`
                 alone; args with -n or -m give one plain pytest run)
                 Before pytest it runs the contract checks (as `./dev check`); the run
                 fails if any of them or pytest fails.
  check          install .[test,dev] into .venv if needed, then run the contract checks:
                 ruff check, ruff format --check, mypy (strict) and lint-imports
  lock [args]    rewrite requirements-lock.txt from pyproject.toml with uv (keeps the
                 current pins where they still fit; `./dev lock --upgrade` takes the newest)
  bench [args]   install .[test] into .venv if needed, then `python -m loadtests [args]`
  help           show this text

environment:
  TOKENSVC_TEST_PG      admin DSN of the test PostgreSQL
                        (default postgresql://postgres@127.0.0.1:5432/test)
  TOKENSVC_TEST_REDIS   URL of the test Redis (default redis://127.0.0.1:6379/0)
  TOKENSVC_TEST_SERVERS auto (default): use the configured/default servers when they answer,
                        otherwise start throwaway ones from local binaries (installing
                        postgresql/redis-server with apt-get when root);
                        existing: never start servers, fail if one does not answer;
                        throwaway: always start throwaway servers
  TOKENSVC_PG_BINDIR    directory with initdb/pg_ctl for a throwaway PostgreSQL
                        (default: newest /usr/lib/postgresql/*/bin, else PATH)
  PYTHON                interpreter used to create .venv (default python3, needs >= 3.11)

The virtualenv is reinstalled whenever pyproject.toml or requirements-lock.txt changes; delete
.venv to start afresh. Paths given to `./dev test` are relative to the repository root.
"""


class Failure(Exception):
    """A task cannot go on; the message says why and what to do."""


def say(message: str) -> None:
    print(f"dev: {message}", file=sys.stderr, flush=True)


def die(message: str) -> NoReturn:
    raise Failure(message)


def redact(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


# ----------------------------------------------------------------------------------------------
# virtualenv
# ----------------------------------------------------------------------------------------------


def install_hash() -> str:
    digest = hashlib.sha256()
    for name in INSTALL_INPUTS:
        path = ROOT / name
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def have_build_tools() -> bool:
    """A C compiler and the OpenSSL headers, for the compiled verify path (tokensvc/_speedups.c).

    Without them the install still works and tokensvc runs its pure-Python path, but the test
    suite fails the tests that hold the compiled path to the Python one.
    """
    if shutil.which("cc") is None:
        return False
    probe = subprocess.run(
        ["cc", "-E", "-x", "c", "-"],
        input=b"#include <openssl/sha.h>\n",
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


_APT_UPDATED: set[bool] = set()  # holds True once `apt-get update` ran in this process


def apt_quietly(*args: str) -> bool:
    done = subprocess.run(
        ["apt-get", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        check=False,
    )
    return done.returncode == 0


def apt_install(*packages: str) -> bool:
    """apt-get install, only as root where apt-get exists; False when it cannot or fails."""
    if not IS_ROOT or shutil.which("apt-get") is None:
        return False
    say(f"installing {' '.join(packages)} with apt-get (quietly, this takes a minute)")
    if not _APT_UPDATED:
        if not apt_quietly("update", "-qq"):
            return False
        _APT_UPDATED.add(True)
    return apt_quietly("install", "-y", "-qq", "--no-install-recommends", *packages)


def ensure_build_tools() -> None:
    if have_build_tools() or apt_install("gcc", "libc6-dev", "libssl-dev"):
        return
    say(
        "warning: no C compiler or OpenSSL headers: tokensvc will use its slower pure-Python "
        "verify path\n  (Debian/Ubuntu: apt-get install gcc libssl-dev, then run this command again)"
    )


def create_venv() -> None:
    python = os.environ.get("PYTHON", "python3")
    if shutil.which(python) is None:
        die(f"{python} not found; install Python >= 3.11 or set PYTHON")
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version_info >= (3, 11), sys.version.split()[0])"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if not version or version[0] != "True":
        found = version[1] if len(version) > 1 else "unknown"
        die(f"{python} is Python {found}; tokensvc needs Python >= 3.11 (set PYTHON=python3.11)")
    say(f"creating virtualenv .venv with Python {version[1]}")
    if subprocess.run([python, "-m", "venv", str(VENV)], check=False).returncode:
        shutil.rmtree(VENV, ignore_errors=True)
        die("could not create .venv (on Debian/Ubuntu: apt-get install python3-venv)")


def venv_python_starts() -> bool:
    try:
        return (
            subprocess.run([str(VPY), "-c", ""], capture_output=True, check=False).returncode == 0
        )
    except OSError:
        return False


def ensure_venv(*want: str) -> None:
    """.venv exists and holds the project with these extras, installed from the current
    pyproject.toml with the versions of the lock."""
    # A venv whose interpreter is gone (Python upgraded or removed) is rebuilt.
    if VENV.is_dir() and not venv_python_starts():
        say(".venv is broken (its Python does not start); recreating it")
        shutil.rmtree(VENV)
    if not VPY.exists():
        create_venv()

    # Serialise installs, so two ./dev commands started at once don't run pip together.
    with (VENV / ".dev-lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = install_hash()
        stamp_hash, have = "", []
        if STAMP.is_file():
            stamp_hash, *have = STAMP.read_text().split()
        reason = ""
        if stamp_hash != current:
            reason = f"pyproject.toml or {LOCK} changed" if stamp_hash else "no install recorded"
        else:
            missing = [extra for extra in want if extra not in have]
            if missing:
                reason = f"extra [{missing[-1]}] not installed yet"
            # Installed while the build tools were missing, and they are here now: build it.
            elif not glob.glob(str(ROOT / "tokensvc" / "_speedups*.so")) and have_build_tools():
                reason = "the compiled verify path is not built yet"
        if not reason:
            return

        # Keep extras installed earlier (./dev test then ./dev run must not drop pytest).
        extras = sorted({*have, *want})
        spec = f".[{','.join(extras)}]" if extras else "."
        if not (ROOT / LOCK).is_file():
            die(f"{LOCK} is missing (./dev lock writes it from pyproject.toml)")
        ensure_build_tools()
        say(f"installing tokensvc{spec[1:]} into .venv ({reason})")
        STAMP.unlink(missing_ok=True)
        log = VENV / ".dev-pip.log"
        # The installer's output (mostly build-backend warnings) is kept out of the way unless
        # it fails.
        with log.open("w") as out:
            returncode = install_with_uv(spec, out)
            if returncode:
                returncode = subprocess.run(
                    [str(VPY), "-m", "pip", "install", "-c", LOCK, "-e", spec],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=PIP_ENV,
                    check=False,
                ).returncode
        if returncode:
            sys.stderr.write("".join(log.read_text().splitlines(keepends=True)[-40:]))
            die(
                f"installing -c {LOCK} -e '{spec}' failed with uv and with pip"
                " (full log: .venv/.dev-pip.log)\n"
                f"  If pyproject.toml changed a requirement, run ./dev lock to update {LOCK}."
            )
        STAMP.write_text(f"{current} {' '.join(extras)}\n")


PIP_ENV = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def install_with_uv(spec: str, out: IO[str]) -> int:
    """Install `spec` into .venv with uv, the lock's version of which pip fetches first (uv
    installs the project in about a fifth of pip's time, a minute of every CI run). Non-zero
    when uv cannot be had or cannot install (no PyPI: uv reads no pip.conf, so no local wheel
    directory or index); the caller then installs with pip, as before."""
    uv = Path(venv_tool("uv"))
    if not uv.exists():
        fetched = subprocess.run(
            [str(VPY), "-m", "pip", "install", "-c", LOCK, "uv"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=PIP_ENV,
            check=False,
        )
        if fetched.returncode or not uv.exists():
            return 1
    # --compile-bytecode: uv writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE is set
    # (as on our CI machines) nothing ever writes them, so every process the tests start (CLI,
    # workers, benchmarks) compiled its dependencies from source: 1.3 of a CLI call's 2.1 s.
    install = [str(uv), "pip", "install", "--compile-bytecode", "--python", str(VPY)]
    installed = subprocess.run(
        [*install, "-c", LOCK, "-e", spec],
        stdout=out,
        stderr=subprocess.STDOUT,
        check=False,
    )
    if installed.returncode:
        out.write("\ndev: uv could not install; pip installs instead\n")
        out.flush()
    return installed.returncode


def venv_tool(name: str) -> str:
    return str(VENV / "bin" / name)


# ----------------------------------------------------------------------------------------------
# test servers
# ----------------------------------------------------------------------------------------------

# Probes print the server version on success, or the reason on failure, and set the exit status.
# They run in .venv, with the project's own client libraries, so they need no client binaries.
PROBE_PG = """
import asyncio, sys
import asyncpg

async def main(dsn):
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        version = await conn.fetchval("SHOW server_version")
        admin = await conn.fetchval(
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user")
    finally:
        await conn.close()
    print(f"PostgreSQL {version.split()[0]}" + ("" if admin else " (WARNING: this role cannot CREATE DATABASE; the tests need it)"))

try:
    asyncio.run(main(sys.argv[1]))
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}".strip().splitlines()[0])
    sys.exit(1)
"""

PROBE_REDIS = """
import sys
import redis

try:
    client = redis.Redis.from_url(sys.argv[1], socket_connect_timeout=3, socket_timeout=3)
    client.ping()
    print("Redis " + client.info("server")["redis_version"])
    client.close()
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}".strip().splitlines()[0])
    sys.exit(1)
"""


def probe(kind: str, url: str) -> tuple[bool, str]:
    """(answers, version or the reason it does not)."""
    script = PROBE_PG if kind == "pg" else PROBE_REDIS
    done = subprocess.run(
        [str(VPY), "-c", script, url], capture_output=True, text=True, check=False
    )
    text = (done.stdout + done.stderr).strip()
    return done.returncode == 0, text.splitlines()[-1] if text else f"exit {done.returncode}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""

    def usable(directory: Path) -> bool:
        return all(os.access(directory / tool, os.X_OK) for tool in ("initdb", "pg_ctl"))

    if os.environ.get("TOKENSVC_PG_BINDIR"):
        configured = Path(os.environ["TOKENSVC_PG_BINDIR"])
        return configured if usable(configured) else None

    # Debian keeps the server binaries out of PATH, one directory per major version; the newest.
    def major(directory: str) -> list[int]:
        return [int(part) for part in re.findall(r"\d+", directory)]

    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True):
        if usable(Path(directory)):
            return Path(directory)
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl and shutil.which("initdb"):
        return Path(pg_ctl).parent
    return None


def as_pg_owner(command: Sequence[str]) -> list[str]:
    """The command as the postgres user when we are root: initdb and pg_ctl refuse to run as root."""
    return ["runuser", "-u", "postgres", "--", *command] if IS_ROOT else list(command)


@dataclass
class Servers:
    """The throwaway servers this run started, stopped and removed by close()."""

    pg_ctl: Path | None = None
    pg_data: Path | None = None
    redis: subprocess.Popen[bytes] | None = None
    directories: list[Path] = field(default_factory=list)

    def scratch_dir(self, kind: str) -> Path:
        directory = Path(tempfile.mkdtemp(prefix=f"tokensvc-test-{kind}."))
        self.directories.append(directory)
        return directory

    def start_pg(self) -> str:
        bindir = find_pg_bindir()
        if bindir is None:
            if not apt_install("postgresql"):
                die(
                    "no PostgreSQL server binaries (initdb, pg_ctl) found and cannot install them.\n"
                    "  Install them (Debian/Ubuntu: apt-get install postgresql), or set "
                    "TOKENSVC_TEST_PG to the admin DSN\n  of a running server, e.g. "
                    f"TOKENSVC_TEST_PG={DEFAULT_TEST_PG}"
                )
            bindir = find_pg_bindir()
            if bindir is None:
                die("apt-get installed postgresql but no initdb/pg_ctl was found")
        if (
            IS_ROOT
            and subprocess.run(["id", "postgres"], capture_output=True, check=False).returncode
        ):
            die(
                "running as root, but there is no 'postgres' user to run initdb as (apt-get install "
                "postgresql creates it),\n  or set TOKENSVC_TEST_PG to the admin DSN of a running server"
            )

        directory = self.scratch_dir("pg")
        (directory / "sock").mkdir()
        if IS_ROOT:
            subprocess.run(["chown", "-R", "postgres:", str(directory)], check=True)
        if subprocess.run(as_pg_owner(["test", "-w", str(directory)]), check=False).returncode:
            die(
                f"the postgres user cannot write to {directory} (set TMPDIR to a directory it can reach)"
            )

        data = directory / "data"
        initdb = [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
        ]
        done = subprocess.run(
            as_pg_owner([*initdb, "--no-locale", "--no-sync"]),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            die(f"initdb failed:\n{done.stdout}{done.stderr}")
        # A throwaway server: TCP on loopback only, socket in its own dir, no durability.
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{directory / 'sock'}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\n"
            )
        self.pg_data, self.pg_ctl = data, bindir / "pg_ctl"

        # The port is free when chosen but may be taken before the server binds it: retry.
        log = directory / "server.log"
        for _ in range(3):
            port = free_port()
            start = [
                str(self.pg_ctl),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port}",
                "start",
            ]
            if subprocess.run(as_pg_owner(start), capture_output=True, check=False).returncode == 0:
                # Mirror the default DSN, whose database is "test".
                createdb = [
                    str(bindir / "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "test",
                ]
                if subprocess.run(createdb, check=False).returncode:
                    die("could not create database 'test' in the throwaway PostgreSQL")
                url = f"postgresql://postgres@127.0.0.1:{port}/test"
                ok, version = probe("pg", url)
                if not ok:
                    die(f"throwaway PostgreSQL started but does not answer: {version}")
                say(f"started throwaway {version} on port {port} (data in {directory})")
                return url
            # Stop whatever half-started before the next attempt.
            stop = [str(self.pg_ctl), "-D", str(data), "-m", "immediate", "stop"]
            subprocess.run(as_pg_owner(stop), capture_output=True, check=False)
        tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
        die("could not start a throwaway PostgreSQL; its log:\n" + "\n".join(tail))

    def start_redis(self) -> str:
        server = shutil.which("redis-server")
        if server is None:
            if not apt_install("redis-server"):
                die(
                    "no redis-server found and cannot install it.\n  Install it (Debian/Ubuntu: "
                    "apt-get install redis-server), or set TOKENSVC_TEST_REDIS to the URL\n  of a "
                    f"running server, e.g. TOKENSVC_TEST_REDIS={DEFAULT_TEST_REDIS}"
                )
            server = shutil.which("redis-server")
            if server is None:
                die("apt-get installed redis-server but it is not on PATH")

        directory = self.scratch_dir("redis")
        log = directory / "redis.log"
        reason = ""
        for _ in range(3):
            port = free_port()
            args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            args += ["--daemonize", "no", "--dir", str(directory), "--logfile", str(log)]
            self.redis = subprocess.Popen(
                [server, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            url = f"redis://127.0.0.1:{port}/0"
            for _ in range(50):
                ok, reason = probe("redis", url)
                if ok:
                    say(f"started throwaway {reason} on port {port} (pid {self.redis.pid})")
                    return url
                if self.redis.poll() is not None:
                    break  # exited, e.g. port taken: next attempt
                time.sleep(0.2)
            self.stop_redis()
        tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
        die(f"could not start a throwaway Redis ({reason}); its log:\n" + "\n".join(tail))

    def stop_redis(self) -> None:
        if self.redis is None:
            return
        self.redis.terminate()
        try:
            self.redis.wait(5)
        except subprocess.TimeoutExpired:
            self.redis.kill()
            self.redis.wait()
        self.redis = None

    def close(self) -> None:
        self.stop_redis()
        if (
            self.pg_data is not None
            and self.pg_ctl is not None
            and (self.pg_data / "postmaster.pid").exists()
        ):
            # Immediate mode: nothing in a throwaway database is worth a clean shutdown.
            stop = [str(self.pg_ctl), "-D", str(self.pg_data), "-m", "immediate", "-w", "stop"]
            if subprocess.run(as_pg_owner(stop), capture_output=True, check=False).returncode:
                pid_file = self.pg_data / "postmaster.pid"
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
                except (OSError, ValueError, IndexError):
                    pass
        self.pg_data = None
        for directory in self.directories:
            shutil.rmtree(directory, ignore_errors=True)
        self.directories.clear()


def ensure_server(servers: Servers, kind: str, mode: str) -> str:
    """The URL of a PostgreSQL (kind "pg") or Redis that answers; never lets the tests run
    without one."""
    var, default, name = (
        ("TOKENSVC_TEST_PG", DEFAULT_TEST_PG, "PostgreSQL")
        if kind == "pg"
        else ("TOKENSVC_TEST_REDIS", DEFAULT_TEST_REDIS, "Redis")
    )
    explicit = bool(os.environ.get(var))
    url = os.environ.get(var) or default
    if mode == "throwaway":
        say(f"TOKENSVC_TEST_SERVERS=throwaway: not using {name} at {redact(url)}")
    else:
        ok, reason = probe(kind, url)
        if ok:
            say(f"using {reason} at {redact(url)}")
            return url
        if mode == "existing":
            die(
                f"{name} at {redact(url)} does not answer ({reason}), and TOKENSVC_TEST_SERVERS=existing.\n"
                f"  Start it, point {var} at a running server, or unset TOKENSVC_TEST_SERVERS to use a throwaway one."
            )
        if explicit:
            say(
                f"{var}={redact(url)} is set but does not answer ({reason}); starting a throwaway {name} instead"
            )
        else:
            say(f"no {name} at the default {redact(url)} ({reason}); starting a throwaway one")
    return servers.start_pg() if kind == "pg" else servers.start_redis()


@contextmanager
def terminating_cleanly() -> Iterator[None]:
    """SIGTERM ends the run through the same cleanup as Ctrl-C (exit status 143)."""

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------


def run_checks() -> list[str]:
    """Run every contract check; one line per failed one, saying what to do."""
    say("contract checks: ruff check, ruff format --check, mypy, lint-imports")
    failed = []
    if subprocess.run([venv_tool("ruff"), "check", "--quiet", "."], check=False).returncode:
        failed.append("ruff check: lint findings above (fix them, or add a noqa with a reason)")
    if subprocess.run(
        [venv_tool("ruff"), "format", "--check", "--quiet", "."], check=False
    ).returncode:
        failed.append("ruff format --check: files above need formatting (.venv/bin/ruff format .)")
    if subprocess.run([venv_tool("mypy")], check=False).returncode:
        failed.append("mypy --strict: type errors above")
    # lint-imports prints its banner and every contract; only a broken one is worth showing.
    # client/ holds tokensvc_client (a distribution of its own, not installed into .venv): on the
    # path so its contract is checked too.
    pythonpath = os.pathsep.join(
        p for p in (str(ROOT / "client"), os.environ.get("PYTHONPATH")) if p
    )
    contracts = subprocess.run(
        [venv_tool("lint-imports"), "--no-cache"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )
    if contracts.returncode:
        output = contracts.stdout + contracts.stderr
        broken = output.find("Broken contracts")
        sys.stderr.write(output[broken:] if broken >= 0 else output)
        failed.append(
            "lint-imports: an import contract is broken (contracts in pyproject.toml, [tool.importlinter])"
        )
    return failed


def report(failures: list[str]) -> None:
    for failure in failures:
        say(f"check failed: {failure}")


def cmd_run(args: list[str]) -> int:
    ensure_venv()
    tokensvc = venv_tool("tokensvc")
    if not os.access(tokensvc, os.X_OK):
        die(".venv/bin/tokensvc is missing; is [project.scripts] tokensvc in pyproject.toml?")
    say(
        "the tokensvc command is in .venv/bin: in another terminal, `source .venv/bin/activate`"
        " puts it on PATH (README: A first token)"
    )
    os.execv(tokensvc, [tokensvc, "serve", *args])


def cmd_check(args: list[str]) -> int:
    ensure_venv("test", "dev")
    failures = run_checks()
    if failures:
        report(failures)
        return 1
    say("contract checks passed")
    return 0


def cmd_lock(args: list[str]) -> int:
    ensure_venv("dev")
    # Every extra and every platform in one file, resolved for the oldest Python we support.
    compile_lock = [venv_tool("uv"), "pip", "compile", "--quiet", "pyproject.toml", "--all-extras"]
    compile_lock += ["--universal", "--python-version", "3.11", "-o", LOCK, *args]
    status = subprocess.run(compile_lock, check=False).returncode
    if status == 0:
        say(f"wrote {LOCK}; commit it with pyproject.toml")
    return status


def pytest_phases(args: list[str]) -> int:
    """Tests wait on PostgreSQL and Redis more than they compute (a database per test), so they
    run in one pytest-xdist worker per core, then the ones marked `serial` (timing-bound) alone;
    unless the caller chose (-n, -m, or -p no:xdist): then one plain pytest run."""
    pytest = [str(VPY), "-m", "pytest"]
    caller_chose = any(
        arg in ("-n", "-m", "no:xdist") or arg.startswith(("-n", "--numprocesses", "-m"))
        for arg in args
    )
    if caller_chose:
        return subprocess.run([*pytest, *args], check=False).returncode
    parallel = subprocess.run(
        # --durations: the slowest tests, for keeping CI inside its 15 minutes.
        [*pytest, "-n", "auto", "-m", "not serial", "--durations=25", *args],
        check=False,
    ).returncode
    serial = subprocess.run([*pytest, "-m", "serial", *args], check=False).returncode
    # Exit 5 (nothing collected) is fine for one phase when the other ran tests.
    if parallel in (0, 5) and serial != 5:
        return serial
    return parallel


def cmd_test(args: list[str]) -> int:
    mode = os.environ.get("TOKENSVC_TEST_SERVERS") or "auto"
    if mode not in ("auto", "existing", "throwaway"):
        die(f"TOKENSVC_TEST_SERVERS must be auto, existing or throwaway, not '{mode}'")

    ensure_venv("test", "dev")
    # The contract checks first: they take seconds where pytest takes minutes, and this way
    # pytest's summary stays the last thing a passing run prints. A failed check does not stop
    # the tests; the run fails at the end, naming it.
    failures = run_checks()
    compile_sources()
    servers = Servers()
    # Cleanup runs on every way out: normal end, error, Ctrl-C, SIGTERM.
    with terminating_cleanly():
        try:
            os.environ["TOKENSVC_TEST_PG"] = ensure_server(servers, "pg", mode)
            os.environ["TOKENSVC_TEST_REDIS"] = ensure_server(servers, "redis", mode)
            status = pytest_phases(args)
        finally:
            servers.close()
    if status == 5:
        say("pytest collected no tests (exit 5): treated as a failure")
    if failures:
        report(failures)
        status = status or 1
    return status


#: The project's own packages, which the editable install leaves uncompiled.
SOURCES = ("tokensvc", "keystore", "caveats", "loadtests", "tests")


def compile_sources() -> None:
    """Write the .pyc files of the project's packages (ignored by git) that are missing or out of
    date, so that the processes the tests start don't each compile them again, even where
    PYTHONDONTWRITEBYTECODE keeps Python from writing them itself. Best effort: a failure here
    (a read-only tree, a syntax error) only costs time, and pytest reports the error itself."""
    subprocess.run(
        [str(VPY), "-m", "compileall", "-q", "-j", "0", *SOURCES],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )


def cmd_bench(args: list[str]) -> int:
    ensure_venv("test")
    os.execv(str(VPY), [str(VPY), "-m", "loadtests", *args])


COMMANDS = {
    "run": cmd_run,
    "test": cmd_test,
    "check": cmd_check,
    "lock": cmd_lock,
    "bench": cmd_bench,
}


def main(argv: list[str]) -> int:
    os.chdir(ROOT)
    command, args = (argv[0], argv[1:]) if argv else ("help", [])
    if command in ("help", "-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    task = COMMANDS.get(command)
    if task is None:
        sys.stderr.write(USAGE)
        say(f"error: unknown command '{command}'")
        return 2
    try:
        return task(args)
    except Failure as failure:
        say(f"error: {failure}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
