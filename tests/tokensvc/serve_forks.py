"""Run `tokensvc <args>` many times with different environments, paying Python's start-up once.

Reads a JSON list of `{"env": {...}, "argv": [...]}` on stdin; imports the command line once;
then for each case forks a child that takes exactly that environment, points its stdout and
stderr at files of its own and calls the console script's entry point (`tokensvc.cli:main`),
as the installed `tokensvc` does. Writes a JSON list of `{"status", "stdout", "stderr"}` (status
null: still running after the timeout, then killed). This process is single-threaded, so the
fork is safe; the one thing a child does not redo is the import-time check of
PROMETHEUS_MULTIPROC_DIR, whose case runs the real executable (tests/tokensvc/test_config_cli.py).

    python tests/tokensvc/serve_forks.py < cases.json
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import traceback
from typing import Any

TIMEOUT = 60.0
PARALLEL = 2


def _child(case: dict[str, Any], out: str, err: str) -> None:
    import tokensvc.cli

    os.environ.clear()
    os.environ.update(case["env"])
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    code = 1
    try:
        tokensvc.cli.main(args=case["argv"], prog_name="tokensvc")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported as the real executable would
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def main() -> None:
    # Imported once, before the forks: the command line and what `serve` imports when it runs.
    import tokensvc.cli
    import tokensvc.composition
    import tokensvc.web.server  # noqa: F401

    cases = json.load(sys.stdin)
    results: list[dict[str, object] | None] = [None] * len(cases)
    running: dict[int, tuple[int, str, str, float]] = {}  # pid -> index, out, err, started
    queue = list(range(len(cases)))
    with tempfile.TemporaryDirectory() as scratch:
        while queue or running:
            while queue and len(running) < PARALLEL:
                index = queue.pop(0)
                out, err = (os.path.join(scratch, f"{index}.{name}") for name in ("out", "err"))
                for path in (out, err):
                    open(path, "w").close()  # created here, opened by the child
                pid = os.fork()
                if pid == 0:
                    _child(cases[index], out, err)
                running[pid] = (index, out, err, time.monotonic())
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                for other, (_, _, _, started) in running.items():
                    if time.monotonic() - started > TIMEOUT:
                        os.kill(other, signal.SIGKILL)
                time.sleep(0.005)
                continue
            index, out, err, started = running.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            timed_out = code == -signal.SIGKILL and time.monotonic() - started > TIMEOUT
            with open(out) as stdout, open(err) as stderr:
                results[index] = {
                    "status": None if timed_out else code,
                    "stdout": stdout.read(),
                    "stderr": stderr.read(),
                }
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
