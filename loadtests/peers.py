"""The http benchmark's peers: the Go verify-peer and nginx `return 200`, and the goals against them.

- **go**: `verify-peer` (../shared/peers/go-verify: Go net/http + gopkg.in/macaroon.v2 +
  macaroon-bakery's checkers, no cache), verifying distinct tokens it minted itself
  (`verify-peer mint`); **go-bare** is the same server with `-bare` (decodes the JSON, answers a
  fixed 200: Go's HTTP ceiling).
- **nginx**: `return 200` with a configuration of our own in the run's temporary directory (one
  worker process, access log off, loopback only): the ceiling of an HTTP server on that core.

Finding either may fail (no Go toolchain, no nginx): the caller then says so and measures the rest.
The ratio and goal functions are pure, so the tests can check them without starting anything.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEER_TARGETS = ("go", "go-bare", "nginx")
GO_SEED = "loadtests-http-seed"
BUILD_TIMEOUT_S = 900.0  # build.sh may apt-get install Go first


@dataclass(frozen=True)
class Found:
    """A peer's binary, or None with the reason it is missing (printed, and kept in the results)."""

    path: str | None
    note: str


def _peers_dir() -> Path:
    """Where build.sh puts verify-peer (its own rule: TOKENSVC_PEERS_DIR, else the XDG cache)."""
    explicit = os.environ.get("TOKENSVC_PEERS_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "tokensvc-peers"


def go_peer_source() -> Path | None:
    """The go-verify folder: `shared/peers/go-verify` beside the repository (or one of its parents,
    for a git worktree kept deeper than the main checkout)."""
    for parent in [ROOT, *ROOT.parents]:
        candidate = parent / "shared" / "peers" / "go-verify" / "build.sh"
        if candidate.is_file():
            return candidate.parent
    return None


def find_go_peer(explicit: str | None = None, *, build: bool = True) -> Found:
    """verify-peer's path: `explicit`, else build.sh's output, else built now with build.sh."""
    if explicit:
        if os.access(explicit, os.X_OK):
            return Found(explicit, f"Go peer: {explicit}")
        return Found(None, f"Go peer: {explicit} (--go-peer) is not an executable file")
    binary = _peers_dir() / "verify-peer"
    if os.access(binary, os.X_OK):
        return Found(str(binary), f"Go peer: {binary}")
    source = go_peer_source()
    if source is None:
        return Found(None, f"Go peer: no {binary} and no shared/peers/go-verify/build.sh found")
    if not build:
        return Found(None, f"Go peer: no {binary} (build it with {source}/build.sh)")
    print(f"http: building the Go peer with {source}/build.sh (Debian's Go packages)…", flush=True)
    try:
        proc = subprocess.run(
            ["bash", str(source / "build.sh")],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Found(None, f"Go peer: build.sh failed ({exc})")
    lines = proc.stdout.strip().splitlines()
    built = lines[-1] if lines else ""
    if proc.returncode != 0 or not built or not os.access(built, os.X_OK):
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Found(
            None, f"Go peer: cannot build it here (build.sh exit {proc.returncode}: {why})"
        )
    return Found(built, f"Go peer: built {built}")


def go_mint(binary: str, n: int, out: Path) -> list[str]:
    """`n` distinct tokens from `verify-peer mint` (4 caveats: time-before, declared subject,
    allow read,write, resource-prefix /docs/), valid for the benchmark's context."""
    cmd = [binary, "mint", "-n", str(n), "-o", str(out), "-subject", "bench", "-ops", "read,write"]
    cmd += ["-resource-prefix", "/docs/", "-ttl", "2h", "-seed", GO_SEED]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"verify-peer mint failed ({proc.returncode}): {proc.stderr[-1000:]}")
    return [line for line in out.read_text().splitlines() if line]


def go_serve_cmd(binary: str, port: int, *, bare: bool) -> list[str]:
    # -procs 1: one P, like tokensvc's one process (the servers share one pinned core anyway).
    cmd = [binary, "serve", "-addr", "127.0.0.1", "-port", str(port), "-procs", "1"]
    return cmd + ["-seed", GO_SEED] + (["-bare"] if bare else [])


def find_nginx(explicit: str | None = None) -> Found:
    path = explicit or shutil.which("nginx") or "/usr/sbin/nginx"
    if os.access(path, os.X_OK):
        return Found(path, f"nginx: {path}")
    return Found(
        None, "nginx: not found on PATH nor at /usr/sbin/nginx (apt-get install nginx-light)"
    )


NGINX_CONF = """\
# loadtests http: nginx `return 200`, the HTTP ceiling on the servers' core.
daemon off;
master_process on;
worker_processes 1;
pid @DIR@/nginx.pid;
error_log @DIR@/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path @DIR@/body;
    proxy_temp_path @DIR@/proxy;
    # The other servers keep a connection open forever; nginx's default closes it after 1,000.
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    default_type application/json;
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 '{"valid":true}'; }
    }
}
"""


def nginx_cmd(binary: str, workdir: Path, port: int) -> list[str]:
    """Write the configuration under `workdir`/nginx and the command that serves it."""
    prefix = workdir / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.replace("@DIR@", str(prefix)).replace("@PORT@", str(port)))
    # -e: the error log before the configuration is read (else the distribution's /var/log path).
    return [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "nginx-error.log")]


# ---- ratios and goals (pure) -----------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or not b or math.isnan(b) or math.isnan(a):
        return float("nan")
    return a / b


def peer_ratios(medians: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """tokensvc's medians over each measured peer's: `{"hot/go": {"rps":…, "p50":…, …}, …}`."""
    out: dict[str, dict[str, Any]] = {}
    for ours in ("hot", "distinct"):
        for peer in PEER_TARGETS:
            if ours not in medians or peer not in medians:
                continue
            a, b = medians[ours], medians[peer]
            out[f"{ours}/{peer}"] = {
                "rps": _ratio(a.get("rps"), b.get("rps")),
                "p50": _ratio(a.get("p50_ms"), b.get("p50_ms")),
                "p99": _ratio(a.get("p99_ms"), b.get("p99_ms")),
                "server_cpu_per_req": _ratio(
                    a.get("server_cpu_us_per_req"), b.get("server_cpu_us_per_req")
                ),
            }
    return out


# (label, ratio key, metric, "≥"/"≤", bound): issue 17's acceptance figures.
PEER_GOALS = (
    ("distinct req/s ≥ 1.2× go", "distinct/go", "rps", "≥", 1.2),
    ("distinct p99 ≤ go p99", "distinct/go", "p99", "≤", 1.0),
    ("hot req/s ≥ 1.6× go", "hot/go", "rps", "≥", 1.6),
    ("hot req/s ≥ 0.5× nginx", "hot/nginx", "rps", "≥", 0.5),
)


def peer_goals(ratios: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal with its value and `met`: True, False, or None when its peer was not measured."""
    goals = []
    for label, key, metric, op, bound in PEER_GOALS:
        value = ratios.get(key, {}).get(metric, float("nan"))
        met = None if math.isnan(value) else (value >= bound if op == "≥" else value <= bound)
        goals.append(
            {
                "goal": label,
                "ratio": key,
                "metric": metric,
                "target": f"{op} {bound:.2f}",
                "value": value,
                "met": met,
            }
        )
    return goals


def render_goals(goals: list[dict[str, Any]]) -> str:
    parts = []
    for g in goals:
        if g["met"] is None:
            parts.append(f"{g['goal']} → not measured (peer missing)")
        else:
            parts.append(f"{g['goal']} → {'PASS' if g['met'] else 'FAIL'} ({g['value']:.2f}×)")
    return "goals vs peers (issue 17): " + "; ".join(parts)
