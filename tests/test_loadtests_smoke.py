"""The micro-benchmark runs end to end and prints its table (tiny counts, no timing assertions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_micro_benchmark_prints_its_table() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests",
            "micro",
            "--iterations",
            "20",
            "--rounds",
            "1",
            "--pool",
            "4",
            "--no-save",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for expected in (
        "µs/op",
        "floor: HMAC-SHA256 chain only",
        "ours: Verifier.verify, tsv1 token",
        "pymacaroons: deserialize + Verifier, same checks",
        "pymacaroons / ours",
        "ours / floor",
        "3 caveats",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    assert "results:" not in out  # --no-save wrote nothing


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtests", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_memory_benchmark_prints_its_table() -> None:
    # Over HTTP against `tokensvc serve`: every token answered 200, RSS per process.
    proc = _run("memory", "--tokens", "300", "--sample-every", "100", "--batch", "50", "--no-save")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    for expected in (
        "RSS at start (MiB)",
        "RSS max (MiB)",
        "growth after the cache filled",
        "tokensvc serve (main)",
        "tokens verified: 300",
        "answers {'200': 300}",
        "max ≤ 150 MB",
    ):
        assert expected in proc.stdout, f"{expected!r} missing from:\n{proc.stdout}"
    assert "results:" not in proc.stdout


def test_memory_benchmark_in_process_prints_its_table() -> None:
    proc = _run(
        "memory",
        "--in-process",
        "--tokens",
        "300",
        "--sample-every",
        "100",
        "--batch",
        "50",
        "--no-save",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for expected in ("RSS at start (MiB)", "RSS max (MiB)", "growth after the cache filled", "300"):
        assert expected in proc.stdout, f"{expected!r} missing from:\n{proc.stdout}"
    assert "results:" not in proc.stdout


def test_report_summarises_results_files(tmp_path: Path) -> None:
    import json

    medians = {"rps": 1000.0, "p50_ms": 1.0, "p99_ms": 3.0, "server_cpu_us_per_req": 50.0}
    ratios = {"rps": 0.9, "p50": 1.1, "p99": 1.2, "server_cpu_per_req": 1.5, "rps_per_round": [0.9]}
    (tmp_path / "http-20990101T000000Z.json").write_text(
        json.dumps(
            {
                "kind": "http",
                "written_at": "2099-01-01T00:00:00",
                "medians": dict.fromkeys(("bare", "hot", "distinct"), medians),
                "ratios": {"hot": ratios, "distinct": ratios},
                "peer_goals": [
                    {
                        "goal": "hot req/s ≥ 1.6× go",
                        "ratio": "hot/go",
                        "metric": "rps",
                        "target": "≥ 1.60",
                        "value": 1.75,
                        "met": True,
                    },
                    {
                        "goal": "hot req/s ≥ 0.5× nginx",
                        "ratio": "hot/nginx",
                        "metric": "rps",
                        "target": "≥ 0.50",
                        "value": float("nan"),
                        "met": None,
                    },
                ],
            }
        )
    )
    (tmp_path / "memory-20990101T000000Z.json").write_text(
        json.dumps(
            {
                "kind": "memory",
                "mode": "http",
                "tokens": 1_000_000,
                "labels": {"42": "tokensvc serve (main)"},
                "processes": {"42": {"max_kib": 160_000, "within_goal": False}},
            }
        )
    )
    (tmp_path / "instructions-20990101T000000Z.json").write_text(
        json.dumps(
            {
                "kind": "instructions",
                "written_at": "2099-01-01T00:00:00",
                "instructions_per_request": {"bare": 200000.0, "hot": 300000.0},
                "ratios": {
                    "hot": {"instructions_per_request": 1.5, "expected_throughput_estimate": 0.667}
                },
            }
        )
    )
    proc = _run("report", "--results-dir", str(tmp_path), "--no-plot")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hot verify req/s / bare" in proc.stdout and "0.90×" in proc.stdout
    assert "hot verify server instr/req / bare (callgrind)" in proc.stdout
    assert "1.50×" in proc.stdout and "≈ 0.67" in proc.stdout
    assert "hot/go rps" in proc.stdout and "1.75×" in proc.stdout
    assert "not measured" in proc.stdout  # nginx
    assert "RSS max of tokensvc serve (main)" in proc.stdout and "156 MiB" in proc.stdout


def test_instructions_says_how_to_install_valgrind_when_it_is_missing() -> None:
    # The callgrind runs themselves take minutes: too slow here. Without valgrind on PATH the
    # command must stop at once with the install hint.
    import os

    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests", "instructions", "--no-save"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "apt-get install valgrind" in proc.stderr


def test_usage_lists_every_command() -> None:
    proc = _run("--help", timeout=60)
    for command in (
        "instructions",
        "storm",
        "workers",
        "memory",
        "locust",
        "client",
        "client-instructions",
        "report",
    ):
        assert command in proc.stdout


def test_client_benchmark_prints_its_goals() -> None:
    """`client` starts tokensvc and the three sample services, checks them, and prints the goals."""
    proc = _run(
        "client",
        "--duration",
        "1",
        "--rounds",
        "1",
        "--warmup",
        "0",
        "--micro-iterations",
        "200",
        "--no-save",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    for expected in (
        "middleware, cache hit",
        "guard, cache hit",
        "middleware, new path each",
        "/v1/verify per request",
        "middleware, cache hit: adds",
        "guard, cache hit: adds",
        "throughput",
        "await client.check(...) on a hit",
        "client.allowed(key) on a remembered allow",
    ):
        assert expected in proc.stdout, f"{expected!r} missing from:\n{proc.stdout}"


def test_client_instructions_counts_hits_only_or_says_how_to_install_valgrind() -> None:
    """`client-instructions` runs the four sample apps under callgrind and prints the goal —
    having checked, through each app's counters, that every counted request was a hit. Where
    valgrind is missing, it says how to install it instead (and exits 2)."""
    import shutil

    proc = _run(
        "client-instructions",
        "--requests",
        "100",
        "--warmup",
        "10",
        "--repeat",
        "1",
        "--no-save",
        timeout=600,
    )
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        assert proc.returncode == 2 and "apt-get install valgrind" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    for expected in (
        "no auth",
        "empty middleware (aiohttp's chain)",
        "middleware, remembered allow",
        "TokensvcGuard, remembered allow",
        "of no auth's throughput, if throughput follows instructions (goal ≥ 0.9×",
    ):
        assert expected in proc.stdout, f"{expected!r} missing from:\n{proc.stdout}"
    # Four positive per-request counts (one run each), the others above no auth's.
    counts = [
        float(line.split()[-3].replace(",", ""))
        for line in proc.stdout.splitlines()
        if line.startswith("client-instructions: run ") and line.endswith(" per request")
    ]
    assert len(counts) == 4 and 0 < counts[0] < min(counts[1:]), proc.stdout
    assert "aiohttp's middleware chain alone: +" in proc.stdout


def test_instructions_server_serves_tokensvcs_verify_listener_and_stops(tmp_path: Path) -> None:
    """The server half of `instructions`, run without valgrind (a callgrind run of tokensvc takes
    minutes): tokensvc's verify listener answers the benchmark's requests valid, and the stop
    route on the app's port ends the process cleanly. (It once imported a module that had been
    removed, and the benchmark broke unnoticed.)"""
    from loadtests.common import free_ports
    from loadtests.httpbench import _admin_token
    from loadtests.instructions import QUIET_BACKGROUND, _body, drive
    from loadtests.svc import base_env

    env = dict(base_env(), TOKENSVC_DATA_DIR=str(tmp_path / "data"), **QUIET_BACKGROUND)
    token = _admin_token(env)
    port, verify_port = free_ports(2)
    command = [sys.executable, "-m", "loadtests.instrserver", "--target", "tokensvc"]
    command += ["--port", str(port), "--verify-port", str(verify_port)]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        drive(verify_port, port, proc, [_body(token)], 5)  # raises unless each answers valid
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
