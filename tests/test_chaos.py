"""bench/chaos.py at a small size, in the normal test run: 8 real workers on a 120-trial study
(the script's default is 200; the faults fall between 10 % and 75 % of the study either way)
while 3 workers are SIGKILLed, PostgreSQL is restarted once and the API is SIGKILLed and
restarted once. Nothing may be lost, duplicated or left running, and nobody may see a 5xx other
than 503 (see the script's docstring for what each number means)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRIALS = 120
SUMMARY = re.compile(r"^chaos: workers=.*$", re.MULTILINE)


def parse_summary(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"([\w]+)=(\d+)", line)}


def test_parse_summary() -> None:
    line = (
        "chaos: workers=8 trials=200 kills=3 db_restarts=1 api_restarts=1 | COMPLETE=180 PRUNED=20 FAIL=5 RUNNING=0 "
        "WAITING=0 | lineages=200 duplicate_numbers=0 running_after_grace=0 missing_acked_reports=2 tracebacks=0 5xx=1 "
        "(503s=12 acked_reports=600 retries=5 seconds=90)"
    )
    s = parse_summary(line)
    assert s["5xx"] == 1 and s["missing_acked_reports"] == 2 and s["503s"] == 12 and s["lineages"] == 200


def test_chaos_small() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "chaos.py"),
            "--workers",
            "8",
            "--trials",
            str(TRIALS),
            "--kills",
            "3",
            "--db-restarts",
            "1",
            "--api-restarts",
            "1",
            "--epochs",
            "3",
            "--timeout",
            "420",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=560,
    )
    found = SUMMARY.findall(result.stdout)
    assert len(found) == 1, f"no summary line\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-5000:]}"
    s = parse_summary(found[0])
    report = f"{found[0]}\nstderr:\n{result.stderr[-4000:]}"
    assert (s["workers"], s["trials"], s["kills"], s["db_restarts"], s["api_restarts"]) == (8, TRIALS, 3, 1, 1), report
    for key in (
        "duplicate_numbers",
        "running_after_grace",
        "missing_acked_reports",
        "tracebacks",
        "5xx",
        "RUNNING",
        "WAITING",
    ):
        assert s[key] == 0, f"{key}={s[key]}\n{report}"
    assert s["lineages"] == TRIALS, report
    assert s["COMPLETE"] + s["PRUNED"] + s["FAIL"] >= TRIALS, report
    assert s["acked_reports"] > 0, f"the workers acknowledged nothing (HPO_ACK_LOG)\n{report}"
    assert result.returncode == 0, report
