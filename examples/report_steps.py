"""A command workload: the worker runs this script once per trial (`python report_steps.py`).

It reads its hyperparameters through the SDK, reports a decreasing loss for 5 steps (the
service's pruner may stop it after any of them), and lets the best reported loss be the
objective. Scripts in other languages read HPO_PARAM_X and the JSON file in HPO_TRIAL_FILE.

Run it with:  hpo worker --allow-command 'examples/*.py'   (from the repository root)
"""

import sys

from worker.sdk import current_trial

trial = current_trial()
x = float(trial.params.get("x", 0.0))
for step in range(1, 6):
    loss = (x - 2.0) ** 2 + 1.0 / step  # stands in for one epoch's validation loss
    if trial.report(loss, step):
        print(f"trial {trial.number}: pruned at step {step}", file=sys.stderr)
        sys.exit(0)  # exit 0 after a prune answer: the trial ends as pruned
trial.set_metrics(final_loss=loss)
