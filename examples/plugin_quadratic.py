"""A plugin workload: the worker imports this module in a child process and calls `train(trial)`.

The returned number is the objective (None: the best reported value). Entry in a study:
`examples.plugin_quadratic:train` (the worker's working directory is on the import path), or
an installed package's `module:function`, or an entry point in group `hpo.workloads`.

Run it with:  hpo worker --allow-plugin 'examples.*'   (from the repository root)
"""

from worker.sdk import Trial


def train(trial: Trial) -> float:
    x, y = float(trial.params["x"]), float(trial.params.get("y", 0.0))
    value = (x - 1.0) ** 2 + (y + 2.0) ** 2
    for step in range(1, 11):
        # A made-up learning curve that approaches `value`.
        if trial.report(value + 10.0 / step, step):
            return None  # pruned: the last report said so
    trial.set_metrics(distance=value**0.5)
    return value
