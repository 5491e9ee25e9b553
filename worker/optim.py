"""Build the torch optimizer a trial's hyperparameters name.

The names, allowed values and defaults live in service/spec/hyperparameters.py (the contract);
the rules of thumb behind them in ../shared/HYPERPARAMETERS.md. This module only maps them onto
torch: which optimizer reads which knob is spelled out once, in `build_optimizer`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from service.spec.hyperparameters import OPTIMIZERS


def build_optimizer(params: Iterable[torch.nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer `hp["optimizer"]` with the knobs of `hp` that apply to it.

    `hp` holds every key of TRAINING_PARAMS, defaults already filled in. Every optimizer reads
    lr and weight_decay; momentum and nesterov only sgd; beta1 and beta2 only adam, adamw,
    adamax and nadam; eps every optimizer but sgd. A knob that does not apply is ignored, so
    a study may search e.g. momentum alongside the optimizer without failing the adam trials.

    Raises ValueError for an unknown optimizer, or for sgd with nesterov but no momentum.
    """
    name = hp["optimizer"]
    # A list, not the iterable itself: a generator such as model.parameters() would be spent
    # by a first constructor that fails (see the fused fallback below).
    params = list(params)
    lr = float(hp["lr"])
    weight_decay = float(hp["weight_decay"])

    if name == "sgd":
        momentum = float(hp["momentum"])
        nesterov = bool(hp["nesterov"])
        if nesterov and momentum == 0:
            # Nesterov is a look-ahead on the momentum term: with no momentum there is nothing
            # to look ahead with (torch refuses it too, less clearly).
            raise ValueError("nesterov=True needs momentum > 0 with optimizer 'sgd'; got momentum=0")
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)

    eps = float(hp["eps"])
    if name in ("adam", "adamw"):
        # β1 = 0.9, β2 = 0.999, ε = 1e-8 "rarely need tuning" (../shared/HYPERPARAMETERS.md,
        # Optimizers): they are the spec's defaults, but a study may still search them.
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        kwargs: dict[str, Any] = dict(
            lr=lr, betas=(float(hp["beta1"]), float(hp["beta2"])), eps=eps, weight_decay=weight_decay
        )
        try:
            # The fused kernel is the same algorithm in one call per step instead of a dozen
            # small ops per parameter: about half the time per step at batch_size=1 on CPU.
            return cls(params, fused=True, **kwargs)
        except RuntimeError:
            # A device (or an older torch) without a fused Adam/AdamW.
            return cls(params, **kwargs)
    if name in ("adamax", "nadam"):
        cls = torch.optim.Adamax if name == "adamax" else torch.optim.NAdam
        return cls(params, lr=lr, betas=(float(hp["beta1"]), float(hp["beta2"])), eps=eps, weight_decay=weight_decay)
    if name == "adagrad":
        # Not hp["lr_decay"]: that is the time_based schedule's k (worker/schedules.py), and
        # Adagrad's own per-step lr_decay would decay the LR a second time. The schedule owns it.
        return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=weight_decay)
    if name == "rmsprop":
        # RMSprop's "decay β" of the squared-gradient average is torch's alpha (0.99), not
        # searched; nor is its optional momentum: the spec gives momentum to sgd only.
        return torch.optim.RMSprop(params, lr=lr, eps=eps, weight_decay=weight_decay)
    if name == "adadelta":
        # Adadelta's rho stays torch's 0.9. torch's lr default is 1.0, but the LR table of
        # HYPERPARAMETERS.md ("Learning rate") suggests 1e-2 to 1e-1 from scratch: hp["lr"] decides.
        return torch.optim.Adadelta(params, lr=lr, eps=eps, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
