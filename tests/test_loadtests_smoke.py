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
