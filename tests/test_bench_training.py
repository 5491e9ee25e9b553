"""The training benchmarks (bench/pruning.py, bench/trainer_speed.py, bench/gpu_packing.py) at
their `--tiny` size: each runs to the end and prints its one summary line. No timing is asserted:
the numbers belong in docs/benchmarks.md, measured at full size."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_bench(module: str, *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-5000:]}"
    )
    return result.stdout


def summary(stdout: str, name: str) -> str:
    found = re.findall(rf"^SUMMARY {name}: .*$", stdout, re.MULTILINE)
    assert len(found) == 1, f"expected one 'SUMMARY {name}:' line\nstdout:\n{stdout}"
    return found[0]


def test_pruning_tiny() -> None:
    line = summary(run_bench("pruning", "--tiny"), "pruning")
    assert re.search(r"epochs pruned/unpruned = \d+\.\d+x; best loss pruned/unpruned = \S+", line), line


def test_pruning_tiny_compares_several_pruners_in_processes() -> None:
    out = run_bench("pruning", "--tiny", "--seeds", "0", "1", "--pruner", "median:1:1", "--pruner", "percentile:25:1:1", "--jobs", "2")
    line = summary(out, "pruning")
    assert re.search(r"epochs pruned/unpruned = \d+\.\d+x; best loss pruned/unpruned = \S+ \(mean over 2 seeds\)", line), line
    for name in ("median:1:1", "p25:1:1"):
        assert re.search(rf"^{name}/none: epochs \d+\.\d+x; best loss mean", out, re.MULTILINE), out
    assert re.search(r"^none: best loss over seeds: mean", out, re.MULTILINE), out


def test_pruning_tiny_runs_a_pruner_optuna_has_and_the_service_does_not() -> None:
    # A threshold of 0 prunes every trial at its first report, whatever the machine's numbers:
    # the row shows the pruner named on the command line was the one the study ran.
    out = run_bench("pruning", "--tiny", "--pruner", "optuna:ThresholdPruner:upper=0")
    row = re.search(r"^\s*0  Threshold:0 +(\d+) +18 +\S+ +(\d+) +(\d+) ", out, re.MULTILINE)
    assert row, out
    epochs, complete, pruned = map(int, row.groups())
    assert (complete, pruned) == (0, 6) and epochs <= 6, out
    assert "best loss pruned/unpruned = n/a" in summary(out, "pruning")


def test_pruning_rejects_an_unknown_optuna_pruner_keyword() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.pruning", "--tiny", "--pruner", "optuna:SuccessiveHalvingPruner:rungs=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "optuna:SuccessiveHalvingPruner:rungs=3" in result.stderr, result.stderr


def test_trainer_speed_tiny() -> None:
    line = summary(run_bench("trainer_speed", "--tiny"), "trainer")
    assert re.search(r"at batch 32 \(cpu\) = \d+\.\d+x \(with the autograd step: \d+\.\d+x at batch 32\)", line), line


def test_gpu_packing_tiny_on_cpu() -> None:
    line = summary(run_bench("gpu_packing", "--tiny", "--device", "cpu"), "gpu_packing")
    assert re.search(r"2 slots / 1 slot trials/hour = mlp \S+, cnn \S+", line), line


def test_gpu_packing_without_cuda_is_skipped() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would measure instead of skipping")
    line = summary(run_bench("gpu_packing", "--tiny"), "gpu_packing")
    assert line == "SUMMARY gpu_packing: skipped (no CUDA device)"
