"""`python -m loadtests {http,micro,instructions,storm,workers,memory,locust,client,client-instructions,report,all} [options]` — see loadtests/README.md."""

from __future__ import annotations

import sys
from collections.abc import Callable

USAGE = """usage: python -m loadtests {http,micro,instructions,storm,workers,memory,locust,client,client-instructions,report,all} [options]

  http   start tokensvc, a bare aiohttp handler, the Go verify-peer and nginx on loopback (servers
         pinned to one core), load them with wrk (or a Python load generator), print /v1/verify
         req/s and p50/p99 latency as ratios against the bare one and the peers
  micro  in-process: tokensvc's verify vs pymacaroons' deserialize + Verifier vs a bare HMAC chain
  instructions  server-side instructions per /v1/verify under callgrind (noise-free), tokensvc
                with a hot token against the bare aiohttp handler, as a ratio (needs valgrind)
  storm    tokensvc with Redis lockout and argon2 (OWASP): logins/s alone, then /v1/verify req/s
           and p99 with and without a concurrent login storm, as ratios
  workers  /v1/verify against `tokensvc serve --workers 1` and `--workers 2`: the 2-vs-1 ratio
  memory   verify N distinct tokens (default 1,000,000) through `tokensvc serve`'s verify port,
           RSS of each of its processes sampled every 50k (--in-process: in this process)
  locust   the locust scenario (login → mint → verify) headless against a fresh tokensvc
  client   a sample aiohttp endpoint: no auth vs tokensvc-client's middleware on a cache hit vs
           /v1/verify per request; the time a hit adds and the throughput ratio (issue 20)
  client-instructions  the same goal counted under callgrind (noise-free): instructions per
           request of no auth, the middleware and TokensvcGuard on a remembered allow
  report   one summary of the latest results files + loadtests/results/latency.png
  all    micro, then http (options: --quick for short runs of both)

`python -m loadtests COMMAND --help` lists a command's options."""


_MODULES = {
    "instructions": "instructions",
    "storm": "storm",
    "workers": "workers",
    "memory": "memory",
    "locust": "locustrun",
    "report": "report",
    "client": "clientbench",
    "client-instructions": "clientinstr",
}


def _guarded(fn: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run a benchmark; a failure of the service under test is a message, not a traceback."""
    try:
        return fn(argv)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "micro":
        from loadtests import micro

        micro.run(rest)
        return 0
    if command == "http":
        from loadtests import httpbench

        return _guarded(httpbench.run, rest)
    if command in _MODULES:
        import importlib

        module = importlib.import_module(f"loadtests.{_MODULES[command]}")
        return _guarded(module.run, rest)
    if command == "all":
        from loadtests import httpbench, micro

        quick = "--quick" in rest
        if [a for a in rest if a != "--quick"]:
            print("all: only --quick is accepted; run micro/http separately for other options")
            return 2
        print("== micro ==", flush=True)
        micro.run(["--iterations", "2000", "--rounds", "3"] if quick else [])
        print("\n== http ==", flush=True)
        return _guarded(
            httpbench.run,
            ["--duration", "3", "--rounds", "2", "--distinct", "2000"] if quick else [],
        )
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
