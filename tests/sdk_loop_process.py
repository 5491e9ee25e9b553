"""A plain Python process running a study's trials with hpo_client's Client.optimize, no `hpo
worker` (tests/test_sdk_trial_loop.py):

    python tests/sdk_loop_process.py URL TOKEN STUDY mixed|hang

mixed: every trial reports steps 1-3; trial 1 prunes itself, trial 2 raises ValueError (caught),
trial 3 returns None (its best report counts), the others return fake_loss. hang: report step 1,
then sleep until killed. Prints the results as one JSON line."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from typing import Any

from hpo_client import ClaimedTrial, Client, TrialPruned


def fake_loss(params: dict[str, Any]) -> float:
    """A loss computed from digits_definition's params, no training: lowest at lr = 10^-2.5."""
    return round(abs(math.log10(params["lr"]) + 2.5) + params["dropout"], 6)


def mixed(t: ClaimedTrial) -> float | None:
    loss = fake_loss(t.params)
    for step in (1, 2, 3):
        t.report(loss + 1.0 / step, step)
    if t.number == 1:
        raise TrialPruned()
    if t.number == 2:
        raise ValueError(f"trial {t.number} is bad on purpose")
    return None if t.number == 3 else loss


def hang(t: ClaimedTrial) -> float:
    t.report(fake_loss(t.params), 1)
    time.sleep(600)
    return 0.0


if __name__ == "__main__":
    url, token, study, mode = sys.argv[1:5]
    with Client(url, token) as hpo:
        results = hpo.optimize(study, mixed if mode == "mixed" else hang, catch=(ValueError,))
    print(json.dumps([asdict(r) for r in results]))
