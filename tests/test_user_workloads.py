"""User workloads (plugin functions, command scripts) run in a child process of a real worker:
the SDK relay, allowlists, crash isolation, memory caps, timeouts.

The end-to-end tests start real `hpo worker` processes against the live server; the relay's
edge cases run run_user_workload directly with a client that records reports (no server)."""

from __future__ import annotations

import math
import os
import signal
import textwrap
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.spec import Assignment
from tests.conftest import LiveServer, start_worker, wait_for
from tests.plugins import MODES
from worker.workloads.allow import command_allowed, plugin_allowed
from worker.workloads.external import run_user_workload
from worker.workloads.policy import Policy

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


# ---------------------------------------------------------------- allowlists (no server)


def test_plugin_allowlist_matches_the_entry_as_written() -> None:
    assert plugin_allowed("mypkg.models:train", ["mypkg.*:train"])
    assert plugin_allowed("my-entry-point", ["other", "my-*"])
    assert not plugin_allowed("mypkg.models:evaluate", ["mypkg.*:train"])
    assert not plugin_allowed("otherpkg:train", ["mypkg.*:train"])
    assert not plugin_allowed("mypkg.models:train", [])  # nothing is allowed unless listed


def test_command_allowlist_uses_real_paths(tmp_path: Path) -> None:
    (tmp_path / "examples" / "sub").mkdir(parents=True)
    (tmp_path / "examples" / "ok.py").write_text("")
    (tmp_path / "examples" / "sub" / "deep.py").write_text("")
    (tmp_path / "secret.py").write_text("")
    (tmp_path / "examples" / "link.py").symlink_to(tmp_path / "secret.py")
    (tmp_path / "shortcut.py").symlink_to(tmp_path / "examples" / "ok.py")
    (tmp_path / "alias").symlink_to(tmp_path / "examples")
    cwd = str(tmp_path)
    allowed = ["examples/*.py"]

    assert command_allowed("examples/ok.py", allowed, cwd) == str(tmp_path / "examples" / "ok.py")
    assert command_allowed("./examples/./ok.py", allowed, cwd) == str(tmp_path / "examples" / "ok.py")
    # `..` is resolved before matching, so it cannot climb out of the allowed directory.
    assert command_allowed("examples/../secret.py", allowed, cwd) is None
    assert command_allowed("examples/../../etc/x.py", allowed, cwd) is None
    assert command_allowed("examples/sub/../../secret.py", allowed, cwd) is None
    # A symlink counts where it points: out of examples/ is refused, into it is the allowed file.
    assert command_allowed("examples/link.py", allowed, cwd) is None
    assert command_allowed("shortcut.py", allowed, cwd) == str(tmp_path / "examples" / "ok.py")
    # `*` stays in one directory; `**` crosses them.
    assert command_allowed("examples/sub/deep.py", allowed, cwd) is None
    assert command_allowed("examples/sub/deep.py", ["examples/**/*.py"], cwd) is not None
    assert command_allowed("examples/ok.py", ["examples/**/*.py"], cwd) is not None
    # Patterns are made absolute and real the same way: an absolute one, or one through a symlink.
    assert command_allowed("examples/ok.py", [str(tmp_path / "examples" / "*.py")], cwd) is not None
    assert command_allowed("examples/ok.py", ["alias/*.py"], cwd) is not None
    assert command_allowed("examples/ok.py", ["examples/*.sh"], cwd) is None
    assert command_allowed("examples/ok.py", [], cwd) is None


# ---------------------------------------------------------------- the relay (no server)


class RecordingClient:
    """Stands in for ServiceClient's report(): records, and answers prune from `prune_from` on."""

    def __init__(self, prune_from: int | None = None) -> None:
        self.reports: list[tuple[int, float]] = []
        self.prune_from = prune_from

    def report(self, a: Assignment, step: int, value: float) -> bool:
        self.reports.append((step, value))
        return self.prune_from is not None and step >= self.prune_from


def assignment(workload: dict[str, Any], params: dict[str, Any], direction: str = "minimize") -> Assignment:
    return Assignment.model_validate(
        {
            "trial_id": 7,
            "lease_id": "lease",
            "study": "s",
            "number": 3,
            "params": params,
            "workload": workload,
            "lease_seconds": 30,
            "heartbeat_seconds": 1,
            "direction": direction,
        }
    )


def run_script(tmp_path: Path, source: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    client = kw.pop("client", RecordingClient())
    a = assignment({"model": "command", "command": str(script), **kw.pop("workload", {})}, params or {}, **kw)
    return run_allowed(a, client, allow=str(tmp_path / "*"), data_root=tmp_path), client


def run_allowed(a: Any, client: Any, *, allow: str, data_root: Path | None) -> Any:
    """Run an assignment's command workload in-process, with `allow` as the only allowed pattern."""
    return run_user_workload(
        a,
        client=client,
        lease_lost=threading.Event(),
        stop=threading.Event(),
        device="cpu",
        data_root=data_root,
        policy=Policy(allow_commands=[allow]),
    )


def test_params_reach_the_script_and_the_token_does_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_TOKEN", "hpo_secret")
    outcome, client = run_script(
        tmp_path,
        """
        import json, os
        from worker.sdk import current_trial
        t = current_trial()
        info = json.load(open(os.environ["HPO_TRIAL_FILE"]))
        assert "HPO_TOKEN" not in os.environ and "hpo_secret" not in json.dumps(dict(os.environ))
        assert os.environ["HPO_PARAM_LR"] == "0.01" and os.environ["HPO_PARAM_OPT"] == "adam"
        assert t.params == info["params"] == {"lr": 0.01, "opt": "adam", "width": 8}
        assert (t.number, t.study, t.device, t.data_root) == (3, "s", "cpu", info["data_root"])
        assert t.workload["model"] == "command"
        assert t.report(3.0, 1) is False and t.report(2.0, 2) is False and not t.should_prune()
        t.set_metrics(acc=0.5, bad=float("nan"))
        """,
        {"lr": 0.01, "opt": "adam"},
        workload={"width": 8},
    )
    assert (outcome.state, outcome.value, outcome.reason) == ("complete", 2.0, None), outcome.error
    assert client.reports == [(1, 3.0), (2, 2.0)]
    assert outcome.metrics == {"acc": 0.5, "reports": 2.0}


def test_explicit_value_wins_and_maximize_keeps_the_highest(tmp_path: Path) -> None:
    source = """
        import sys
        from worker.sdk import current_trial
        t = current_trial()
        for step, v in enumerate([0.2, 0.9, 0.5], start=1):
            t.report(v, step)
        if sys.argv[1:] == ["explicit"]:
            t.set_value(0.7)
        """
    outcome, _ = run_script(tmp_path, source, direction="maximize")
    assert (outcome.state, outcome.value) == ("complete", 0.9)
    outcome, _ = run_script(tmp_path, source, workload={"args": ["explicit"]})
    assert (outcome.state, outcome.value) == ("complete", 0.7)


def test_prune_answer_then_exit_zero_is_pruned(tmp_path: Path) -> None:
    outcome, client = run_script(
        tmp_path,
        """
        import sys
        from worker.sdk import current_trial
        t = current_trial()
        for step in range(1, 10):
            if t.report(1.0 / step, step):
                sys.exit(0)
        """,
        client=RecordingClient(prune_from=3),
    )
    assert outcome.state == "pruned" and outcome.reason is None
    assert [s for s, _ in client.reports] == [1, 2, 3]


def test_a_nan_report_prunes_as_diverged_without_reaching_the_service(tmp_path: Path) -> None:
    outcome, client = run_script(
        tmp_path,
        """
        import sys
        from worker.sdk import current_trial
        t = current_trial()
        t.report(1.0, 1)
        if t.report(float("nan"), 2):
            sys.exit(0)
        raise SystemExit("not told to stop")
        """,
    )
    assert (outcome.state, outcome.reason) == ("pruned", "diverged")
    assert "nan" in outcome.error
    assert client.reports == [(1, 1.0)]


def test_no_value_and_nonzero_exit(tmp_path: Path) -> None:
    outcome, _ = run_script(tmp_path, "print('nothing to say')\n")
    assert (outcome.state, outcome.reason) == ("failed", "no_value")

    outcome, _ = run_script(
        tmp_path,
        """
        import sys
        sys.stderr.write("x" * 10000 + "\\nthe last words\\n")
        sys.exit(3)
        """,
    )
    assert (outcome.state, outcome.reason) == ("failed", "exit")
    assert outcome.error.startswith("exit code 3")
    assert outcome.error.rstrip().endswith("the last words")
    assert len(outcome.error) <= 2000  # what the service keeps

    outcome, _ = run_script(tmp_path, "x = bytearray(1)\nraise MemoryError\n")
    assert (outcome.state, outcome.reason) == ("failed", "oom")


def test_any_language_can_speak_the_protocol(tmp_path: Path) -> None:
    script = tmp_path / "objective.sh"
    script.write_text(
        textwrap.dedent(
            """\
            #!/usr/bin/env bash
            R=${HPO_SDK_FDS%,*}; W=${HPO_SDK_FDS#*,}
            echo "{\\"op\\": \\"report\\", \\"step\\": 1, \\"value\\": $HPO_PARAM_X}" >&$W
            read answer <&$R
            case "$answer" in *false*) ;; *) exit 9 ;; esac
            echo "{\\"op\\": \\"value\\", \\"value\\": $1}" >&$W
            read answer <&$R
            """
        )
    )
    script.chmod(0o755)
    client = RecordingClient()
    a = assignment({"model": "command", "command": str(script), "args": ["0.125"]}, {"x": 2.5})
    outcome = run_allowed(a, client, allow=str(tmp_path / "*.sh"), data_root=None)
    assert (outcome.state, outcome.value) == ("complete", 0.125), outcome.error
    assert client.reports == [(1, 2.5)]


# ---------------------------------------------------------------- real server, real workers


def definition(name: str, workload: dict[str, Any], space: dict[str, Any], n_trials: int, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "workload": workload,
        "space": space,
        "sampler": more.pop("sampler", {"kind": "random", "seed": 0}),
        "pruner": {"kind": "none"},
        "budget": {"n_trials": n_trials, "max_concurrent": 1},
        **more,
    }


def trials_of(c: httpx.Client, name: str) -> list[dict[str, Any]]:
    response = c.get(f"/api/v1/studies/{name}/trials")
    assert response.status_code == 200, response.text
    return response.json()["trials"]


def finished(c: httpx.Client, name: str, n: int) -> bool:
    trials = trials_of(c, name)
    return len(trials) == n and all(t["state"] != "RUNNING" for t in trials)


def wait_exit(worker: Any, timeout: float = 120) -> int:
    try:
        return worker.wait(timeout=timeout)
    finally:
        if worker.poll() is None:
            worker.kill()


@pytest.fixture
def importable_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started from here find `tests.plugins` whatever the working directory."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def gone(pid: int) -> bool:
    """Not running (exited, or a zombie nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_a_command_workload_reports_every_step_through_a_real_worker(live_server: LiveServer, make_token: Any, team: str) -> None:
    token = make_token(team)
    study = definition(
        "steps",
        {"model": "command", "command": str(EXAMPLES / "report_steps.py"), "timeout_seconds": 120},
        {"x": {"type": "float", "low": -5.0, "high": 5.0}},
        n_trials=2,
    )
    with live_server.client(token) as c:
        assert c.post("/api/v1/studies", json=study).status_code == 201
        worker = start_worker(
            live_server.url, token, "--worker-id", "cmd-1", "--max-trials", "2", "--allow-command", str(EXAMPLES / "*.py")
        )
        assert wait_exit(worker) == 0
        trials = trials_of(c, "steps")
    assert len(trials) == 2
    for t in trials:
        assert t["state"] == "COMPLETE", t
        values = t["intermediate_values"]
        assert sorted(map(int, values)) == [1, 2, 3, 4, 5]
        x = t["params"]["x"]
        assert math.isclose(t["value"], (x - 2.0) ** 2 + 1.0 / 5)  # the best of the 5 reports
        assert t["worker_id"] == "cmd-1"
        assert t["metrics"]["reports"] == 5.0 and math.isclose(t["metrics"]["final_loss"], t["value"])


def test_code_not_on_the_allowlist_is_refused(live_server: LiveServer, make_token: Any, team: str, importable_tests: None) -> None:
    token = make_token(team)
    escape = f"{EXAMPLES}/../tests/plugins.py"  # inside examples/ as written, not really
    with live_server.client(token) as c:
        for name, workload in [
            ("plugin-refused", {"model": "plugin", "entry": "tests.plugins:quadratic"}),
            ("command-refused", {"model": "command", "command": escape}),
        ]:
            study = definition(name, workload, {"x": {"type": "float", "low": 0.0, "high": 1.0}}, n_trials=1)
            assert c.post("/api/v1/studies", json=study).status_code == 201
        worker = start_worker(
            live_server.url, token, "--max-trials", "2",
            "--allow-plugin", "examples.*", "--allow-command", str(EXAMPLES / "*.py"),
        )  # fmt: skip
        assert wait_exit(worker) == 0
        plugin = trials_of(c, "plugin-refused")[0]
        command = trials_of(c, "command-refused")[0]
    for t in (plugin, command):
        assert (t["state"], t["reason"]) == ("FAIL", "not_allowed"), t
        assert t["intermediate_values"] == {}
    assert "tests.plugins:quadratic" in plugin["error"]
    assert "--allow-plugin" in plugin["error"] and "HPO_ALLOW_PLUGINS" in plugin["error"]
    assert str(ROOT / "tests" / "plugins.py") in command["error"]  # the real path it resolved to
    assert "--allow-command" in command["error"] and "HPO_ALLOW_COMMANDS" in command["error"]


def test_crashes_fail_only_their_own_trial(live_server: LiveServer, make_token: Any, team: str, importable_tests: None) -> None:
    token = make_token(team)
    # Trials 0-3 raise, abort, hog memory, and succeed, in that order (tests.plugins.MODES), one
    # at a time: each failure is followed by a trial on the same worker.
    study = definition(
        "crashes",
        {"model": "plugin", "entry": "tests.plugins:modes", "timeout_seconds": 120},
        {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        n_trials=4,
    )
    after = definition(  # examples/plugin_quadratic.py, as its YAML runs it
        "after",
        {"model": "plugin", "entry": "examples.plugin_quadratic:train", "y": 0.5},
        {"x": {"type": "float", "low": -4.0, "high": 4.0}},
        n_trials=1,
    )
    with live_server.client(token) as c:
        assert c.post("/api/v1/studies", json=study).status_code == 201
        worker = start_worker(
            live_server.url, token, "--worker-id", "iso-1", "--max-trials", "5",
            "--allow-plugin", "tests.plugins:*", "--allow-plugin", "examples.*", "--trial-memory-mb", "1024",
        )  # fmt: skip
        try:
            wait_for(lambda: finished(c, "crashes", 4), 120, "the four trials did not finish")
            assert worker.poll() is None  # alive after a raise, an abort and a memory hog
            # The same process takes the next trial, and completes it.
            assert c.post("/api/v1/studies", json=after).status_code == 201
        finally:
            assert wait_exit(worker) == 0
        trials = {MODES[t["number"]]: t for t in trials_of(c, "crashes")}
        next_trial = trials_of(c, "after")[0]

    assert set(trials) == {"raise", "abort", "hog", "ok"}
    assert {t["worker_id"] for t in [*trials.values(), next_trial]} == {"iso-1"}
    assert (trials["raise"]["state"], trials["raise"]["reason"]) == ("FAIL", "exception")
    assert "ValueError: boom from the plugin" in trials["raise"]["error"]
    assert (trials["abort"]["state"], trials["abort"]["reason"]) == ("FAIL", "crashed")
    assert "SIGABRT" in trials["abort"]["error"]
    assert (trials["hog"]["state"], trials["hog"]["reason"]) == ("FAIL", "oom")
    assert "MemoryError" in trials["hog"]["error"]
    ok = trials["ok"]
    assert (ok["state"], ok["value"]) == ("COMPLETE", 0.25)
    assert ok["metrics"]["rlimit_as_mb"] == 1024.0  # the cap was on the child, not the worker
    assert next_trial["state"] == "COMPLETE"
    assert math.isclose(next_trial["value"], (next_trial["params"]["x"] - 1.0) ** 2 + 2.5**2)
    assert len(next_trial["intermediate_values"]) == 10


HANG = """
import os, subprocess, sys, time
from worker.sdk import current_trial
helper = subprocess.Popen(["sleep", "300"])
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpid()} {helper.pid}")
current_trial().report(1.0, 1)
time.sleep(300)
"""


def test_a_hung_script_is_killed_by_the_timeout(live_server: LiveServer, make_token: Any, team: str, tmp_path: Path) -> None:
    token = make_token(team)
    (tmp_path / "hang.py").write_text(HANG)
    pids = tmp_path / "pids"
    study = definition(
        "hung",
        {"model": "command", "command": str(tmp_path / "hang.py"), "args": [str(pids)]},
        {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        n_trials=1,
    )
    with live_server.client(token) as c:
        assert c.post("/api/v1/studies", json=study).status_code == 201
        # No timeout_seconds in the workload: the worker's default applies.
        worker = start_worker(
            live_server.url, token, "--max-trials", "1", "--trial-timeout", "3", "--allow-command", str(tmp_path / "*.py")
        )
        assert wait_exit(worker) == 0
        t = trials_of(c, "hung")[0]
    assert (t["state"], t["reason"]) == ("FAIL", "timeout"), t
    assert "timed out after 3s" in t["error"]
    assert list(t["intermediate_values"].values()) == [1.0]
    # The whole process group went: the script and the helper it started.
    for pid in map(int, pids.read_text().split()):
        wait_for(lambda pid=pid: gone(pid), 30, f"process {pid} outlived the timeout")


def test_sigterm_stops_a_user_workload_and_the_worker(live_server: LiveServer, make_token: Any, team: str, tmp_path: Path) -> None:
    token = make_token(team)
    (tmp_path / "hang.py").write_text(HANG)
    pids = tmp_path / "pids"
    study = definition(
        "stopped",
        {"model": "command", "command": str(tmp_path / "hang.py"), "args": [str(pids)], "timeout_seconds": 600},
        {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        n_trials=1,
    )
    with live_server.client(token) as c:
        assert c.post("/api/v1/studies", json=study).status_code == 201
        worker = start_worker(live_server.url, token, "--allow-command", str(tmp_path / "*.py"))
        try:
            wait_for(lambda: bool(trials_of(c, "stopped")) and trials_of(c, "stopped")[0]["intermediate_values"], 120, "no report")
            worker.send_signal(signal.SIGTERM)
        finally:
            assert wait_exit(worker) == 0
        t = trials_of(c, "stopped")[0]
    assert (t["state"], t["reason"]) == ("FAIL", "interrupted"), t
    assert "signal" in t["error"]
    for pid in map(int, pids.read_text().split()):
        wait_for(lambda pid=pid: gone(pid), 30, f"process {pid} outlived the worker's stop")


def test_the_examples_are_valid_study_definitions() -> None:
    import yaml

    from service.spec import StudySpec

    specs = {p.name: StudySpec.model_validate(yaml.safe_load(p.read_text())) for p in EXAMPLES.glob("*.yaml")}
    assert specs["report_steps.yaml"].workload.command == "examples/report_steps.py"
    assert specs["plugin_quadratic.yaml"].workload.entry == "examples.plugin_quadratic:train"


def test_builtin_failures_are_classified_and_the_worker_goes_on(
    live_server: LiveServer, make_token: Any, team: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-process trainer's outcomes, one per trial: CUDA out of memory, refused data, a
    diverged run, and a healthy one whose metrics reach the service."""
    import torch

    import worker.trainer
    from tests.conftest import digits_definition
    from worker.client import ServiceClient
    from worker.data import DataError
    from worker.runner import Runner
    from worker.trainer import EpochResult

    seen_roots = []

    def scripted(workload: Any, hp: Any, device: Any, *, data_root: Any = None) -> Any:
        seen_roots.append(data_root)
        number = len(seen_roots) - 1
        if number == 0:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if number == 1:
            raise DataError("data/x.npz: not under the data root")
        yield EpochResult(1, 2.0, 2.1, 0.4, 0.1)
        if number == 2:
            yield EpochResult(2, float("nan"), 50.0, None, 0.1, diverged="training loss 50 > 10x the first loss")
            raise AssertionError("the runner went on after a diverged result")
        yield EpochResult(2, 1.5, 1.6, 0.6, 0.05)

    monkeypatch.setattr(worker.trainer, "train", scripted)
    token = make_token(team)
    with live_server.client(token) as c:
        study = digits_definition("inproc", pruner={"kind": "none"}, budget={"n_trials": 4, "max_concurrent": 1})
        assert c.post("/api/v1/studies", json=study).status_code == 201
        client = ServiceClient(live_server.url, token)
        runner = Runner(client=client, worker_id="inproc", device="cpu", data_root=tmp_path)
        assert runner.run(max_trials=4, exit_when_idle=0.5) == 4
        client.close()
        trials = sorted(trials_of(c, "inproc"), key=lambda t: t["number"])
    assert seen_roots == [tmp_path] * 4
    assert [(t["state"], t["reason"]) for t in trials] == [
        ("FAIL", "oom"),
        ("FAIL", "data"),
        ("PRUNED", "diverged"),
        ("COMPLETE", None),
    ]
    assert "CUDA out of memory" in trials[0]["error"] and "not under the data root" in trials[1]["error"]
    assert "training loss 50" in trials[2]["error"]
    assert list(trials[2]["intermediate_values"].values()) == [2.0]  # the diverged epoch is not reported
    assert trials[3]["value"] == 1.5
    metrics = dict(trials[3]["metrics"])
    # Measured, so only their presence is known; a trainer double has no model to count (params_m).
    assert metrics.pop("epoch_seconds") >= 0 and metrics.pop("peak_memory_mb") > 0
    assert metrics == {"val_accuracy": 0.6, "train_loss": 1.6, "lr": 0.05, "epochs": 2.0}


def test_a_plugin_entry_point_is_found_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.plugin_host import load

    # An installed distribution, as `pip install` of a team's package would leave it.
    dist = tmp_path / "teamplug-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: teamplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[hpo.workloads]\nquadratic = examples.plugin_quadratic:train\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))

    import examples.plugin_quadratic

    assert load("quadratic") is examples.plugin_quadratic.train
    with pytest.raises(LookupError, match="quadratic"):
        load("no-such-workload")
