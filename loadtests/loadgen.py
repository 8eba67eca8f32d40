"""Driving a load generator: wrk (installed with apt-get if missing and we are root) or pyload.

Both report the same dict: requests, duration_us, errors {connect, read, write, status, timeout},
latency_us {p50, p90, p99, p999, mean, max}.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.common import pinned

# POST bodies from a file (one JSON body per line), requests pre-built once per thread. Thread k of
# T starts at body OFFSET+k and steps by T, so together the threads walk the list in order from
# OFFSET (wrapping around) and no two threads send the same body. done() prints exact percentiles
# as one JSON line.
WRK_SCRIPT = r"""
local bodies_path = "@BODIES@"
local path = "@PATH@"
local next_id = 0
local requests = {}
local n = 0
local index = 0
local step = 1

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
end

function init(args)
  step = tonumber(args[1]) or 1
  local offset = tonumber(args[2]) or 0
  local headers = {["Content-Type"] = "application/json"}
  for line in io.lines(bodies_path) do
    if #line > 0 then
      n = n + 1
      requests[n] = wrk.format("POST", path, headers, line)
    end
  end
  index = offset + (thread_id or 0)
end

function request()
  local r = requests[(index % n) + 1]
  index = index + step
  return r
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'LOADTESTS_JSON {"requests": %d, "duration_us": %.0f, "bytes": %.0f, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %.0f, "p90": %.0f, "p99": %.0f, "p999": %.0f, "mean": %.1f, "max": %.0f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
"""

_JSON_LINE = re.compile(r"^LOADTESTS_JSON (\{.*\})$", re.MULTILINE)
_TEXT_PCT = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_TEXT_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


@dataclass
class LoadGen:
    kind: str  # "wrk" or "python"
    path: str  # the wrk binary, or the Python interpreter
    version: str
    threads: int

    def describe(self) -> str:
        if self.kind == "wrk":
            return f"{self.version}, {self.threads} thread(s)"
        return "Python asyncio load generator (loadtests.pyload) — likely the bottleneck"

    def run(
        self,
        *,
        url: str,
        bodies: Path,
        duration: float,
        connections: int,
        workdir: Path,
        offset: int = 0,
        cpus: set[int] | None = None,
    ) -> dict[str, Any]:
        """One closed-loop run against `url`, bodies from line `offset` on; RuntimeError on failure."""
        timeout = duration + 60
        if self.kind == "wrk":
            script = workdir / f"post-{bodies.stem}.lua"
            path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else "/"
            script.write_text(
                WRK_SCRIPT.replace("@BODIES@", _lua_string(str(bodies))).replace("@PATH@", path)
            )
            cmd = [
                self.path,
                "-t",
                str(self.threads),
                "-c",
                str(connections),
                "-d",
                f"{max(1, round(duration))}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                str(script),
                url,
                "--",
                str(self.threads),
                str(offset),
            ]
        else:
            cmd = [
                self.path,
                "-m",
                "loadtests.pyload",
                "--url",
                url,
                "--bodies",
                str(bodies),
                "--duration",
                str(duration),
                "--connections",
                str(connections),
                "--offset",
                str(offset),
            ]
        proc = subprocess.run(
            pinned(cmd, cpus),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=Path(__file__).resolve().parent.parent,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{self.kind} exited with {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}"
            )
        return parse_output(self.kind, proc.stdout)


def _lua_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def parse_output(kind: str, stdout: str) -> dict[str, Any]:
    """The result dict from wrk's output (our done() line, else its --latency text) or pyload's."""
    if kind == "python":
        return dict(json.loads(stdout.strip().splitlines()[-1]))
    match = _JSON_LINE.search(stdout)
    if match:
        result = dict(json.loads(match.group(1)))
        result["text"] = stdout
        return result
    # Fallback: wrk's own --latency report.
    pcts = {p: float(v) * _UNIT_US[u] for p, v, u in _TEXT_PCT.findall(stdout)}
    rps = _TEXT_RPS.search(stdout)
    if not rps or "50" not in pcts or "99" not in pcts:
        raise RuntimeError(f"cannot parse wrk output:\n{stdout[-2000:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", stdout)
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", stdout)
    duration_us = float(total.group(2)) * _UNIT_US[total.group(3)] if total else 0.0
    requests = int(total.group(1)) if total else int(float(rps.group(1)) * duration_us / 1e6)
    return {
        "requests": requests,
        "duration_us": duration_us,
        "errors": {"status": int(non2xx.group(1)) if non2xx else 0},
        "latency_us": {"p50": pcts["50"], "p90": pcts.get("90"), "p99": pcts["99"]},
        "text": stdout,
    }


def _wrk_version(path: str) -> str:
    try:
        proc = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "wrk"
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return text[0].split(" [")[0] if text else "wrk"


def _install_wrk() -> str | None:
    """apt-get install wrk when we are root on a Debian-like system; the binary's path or None."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(
            "http: wrk not found and cannot install it (needs root and apt-get); "
            "install the Debian package `wrk` for real figures",
            file=sys.stderr,
        )
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(
        "http: wrk not found; installing the Debian package `wrk` with apt-get (we are root)…",
        file=sys.stderr,
        flush=True,
    )
    for attempt in ("install", "update+install"):
        try:
            if attempt == "update+install":
                print(
                    "http: apt-get install failed; running apt-get update and retrying…",
                    file=sys.stderr,
                    flush=True,
                )
                subprocess.run(
                    ["apt-get", "update", "-qq"],
                    env=env,
                    timeout=300,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    check=False,
                )
            proc = subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"],
                env=env,
                timeout=300,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"http: apt-get failed: {exc}", file=sys.stderr)
            return None
        found = shutil.which("wrk")
        if proc.returncode == 0 and found:
            print(f"http: installed {found}", file=sys.stderr)
            return found
    print(f"http: could not install wrk: {proc.stderr.strip()[-500:]}", file=sys.stderr)
    return None


def find(preference: str, threads: int) -> LoadGen:
    """The load generator to use: `wrk`, `python`, or `auto` (wrk, installed if need be, else python)."""
    if preference in ("auto", "wrk"):
        path = shutil.which("wrk") or _install_wrk()
        if path:
            return LoadGen("wrk", path, _wrk_version(path), threads)
        if preference == "wrk":
            raise SystemExit("http: --loadgen wrk, but wrk is not available")
        print(
            "http: falling back to the Python load generator (figures will understate tokensvc's "
            "gap to the bare handler: the generator is the bottleneck)",
            file=sys.stderr,
        )
    return LoadGen("python", sys.executable, "loadtests.pyload", 1)
