"""The training benchmarks (bench/pruning.py, bench/trainer_speed.py, bench/gpu_packing.py, bench/fused.py) at
their `--tiny` size: each runs to the end and prints its one summary line. No timing is asserted:
the numbers belong in docs/benchmarks.md, measured at full size."""

from __future__ import annotations

import json
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
    per = r"\S+x \d+% \S+x"
    assert re.search(rf"median:5:2 \[demo {per} \| cnn {per} \| regression {per}\] goal met on \d/3 ", line), line
    assert "2 seeds, budget 9 epochs" in line, line


def test_pruning_tiny_compares_several_pruners_in_processes(tmp_path: Path) -> None:
    # A threshold of 0 prunes every trial at its first report, whatever the machine's numbers:
    # its rows show that the pruner named on the command line is the one the arm ran.
    plot, saved = tmp_path / "anytime.png", tmp_path / "arms.json"
    out = run_bench(
        "pruning", "--tiny", "--workload", "demo", "--jobs", "2", "--plot", str(plot), "--save", str(saved),
        "--pruner", "median:1:1", "--pruner", "successive_halving:min_resource=1,reduction_factor=2", "--pruner", "threshold:upper=0",
    )
    line = summary(out, "pruning")
    assert re.search(r"median:1:1 \[demo \S+x \d+% \S+x\] goal met on \d/1; successive_halving:\S+ \[demo ", line), line
    rows = re.findall(r"^demo +(\d) +threshold:upper=0 +(\d+) +(\d+) +(\d+) +(\d+) ", out, re.MULTILINE)
    assert len(rows) == 2, out
    for _, epochs, trials, complete, pruned in rows:
        assert int(complete) == 0 and int(pruned) == int(trials) == int(epochs) >= 9, out
    assert "threshold:upper=0 [demo infx 0% 1.00x]" in line, line
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    arms = json.loads(saved.read_text())["arms"]
    assert len(arms) == 2 * 4 and all(len(a["curve"]) == 9 for a in arms)
    # Read back, the saved arms give the same figures without training.
    assert summary(run_bench("pruning", "--load", str(saved)), "pruning") == line
    # A later run takes its no-pruning arms from the saved one instead of training them.
    again = run_bench("pruning", "--tiny", "--workload", "demo", "--baseline-from", str(saved), "--pruner", "median:1:1")
    assert summary(again, "pruning").startswith(line.split("; successive_halving")[0]), again
    none_rows = lambda text: re.findall(r"^demo +\d +none .*$", text, re.MULTILINE)  # noqa: E731
    assert sorted(none_rows(again)) == sorted(none_rows(out)), again


def test_pruning_rejects_a_pruner_the_study_definition_refuses() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.pruning", "--tiny", "--pruner", "hyperband:reduction_factor=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "hyperband:reduction_factor=1" in result.stderr, result.stderr


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


def test_fused_tiny() -> None:
    line = summary(run_bench("fused", "--tiny"), "fused")
    assert re.search(r"K=2 fused / alone trial-epochs/s = mlp32 \d+\.\dx, cnn8 \d+\.\dx; fused / 2 slots = mlp32 \d+\.\dx, cnn8 \d+\.\dx$", line), line
