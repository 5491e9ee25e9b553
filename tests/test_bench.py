"""bench/coordination.py, bench/throughput.py, bench/numbering.py and bench/claim_profile.py at
their --tiny size, as a user runs them: they must run to the end and print their summary line.
No timing is asserted (DESIGN.md: benchmarks
print ratios, tests never assert wall-clock times); the pruning parity check is a correctness
check, so every decision must match."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(module: str, admin_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, "--tiny", "--database-url", admin_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def summary(result: subprocess.CompletedProcess[str], prefix: str) -> str:
    report = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    assert result.returncode == 0, report
    lines = [line for line in result.stdout.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, report
    return lines[0]


def test_coordination_tiny(admin_url: str) -> None:
    result = run_bench("bench.coordination", admin_url)
    line = summary(result, "SUMMARY coordination:")
    assert re.search(r"service/raw per-trial p50 random @10 = \S+, @50 = \S+; tpe @10 = \S+, @50 = \S+;", line), line
    assert "service report p50 @50 / @10 =" in line, line
    parity = re.search(r"^prune decisions identical: (\d+)/(\d+)$", result.stdout, re.MULTILINE)
    assert parity, result.stdout
    same, total = int(parity.group(1)), int(parity.group(2))
    assert total > 0 and same == total, result.stdout


def test_throughput_tiny(admin_url: str) -> None:
    result = run_bench("bench.throughput", admin_url)
    line = summary(result, "SUMMARY throughput:")
    assert re.search(r"service \d+ reports/s \(4 workers, 1 API process\) vs pgbench ", line), line


def test_numbering_tiny(admin_url: str) -> None:
    result = run_bench("bench.numbering", admin_url)
    line = summary(result, "SUMMARY numbering:")
    assert re.search(r"new trial p50 @1000 / @10: optuna [\d.]+x, service [\d.]+x$", line), line


def test_claim_profile_tiny(admin_url: str) -> None:
    result = run_bench("bench.claim_profile", admin_url)
    line = summary(result, "SUMMARY claim_profile:")
    assert re.search(r"@10 fresh [\d.]+x, kept [\d.]+x; @50 fresh [\d.]+x, kept [\d.]+x$", line), line
