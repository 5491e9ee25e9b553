"""torch's optimizers, stepped on K members' stacked parameters at once, each member with its own
hyperparameters (lr, weight decay, momentum, betas, eps as one value per member).

Each rule is torch's own update (torch/optim/*.py, `_single_tensor_*`, and the fused Adam kernel
the unfused trainer uses) written with the per-member values broadcast along the first
dimension: the same arithmetic, so a member stepped here follows the trajectory it would follow
alone, to float rounding (the order of a few operations differs). A member with weight decay 0,
or SGD's momentum 0, gets exactly torch's update without that term (x + 0 * p == x).

The state is torch's (same names, same meaning), stacked; `member_state` / `load_member_state`
convert one member's slice to and from the per-parameter dicts of its own torch optimizer, so a
checkpoint made fused resumes alone and the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# The state tensors torch keeps per parameter, per optimizer ("step" apart: one per member here).
STATE_KEYS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum_buffer",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
    "rmsprop": ("square_avg",),
    "adagrad": ("sum",),
    "adadelta": ("square_avg", "acc_delta"),
    "adamax": ("exp_avg", "exp_inf"),
    "nadam": ("exp_avg", "exp_avg_sq"),
}


class StackedOptimizer:
    """The update rule `kind` over `params` (stacked leaves, (K, ...) each), with the members'
    torch optimizers (one param group each) as the source of their hyperparameters."""

    def __init__(self, kind: str, params: list[torch.Tensor], *, nesterov: bool = False) -> None:
        if kind not in STATE_KEYS:
            raise ValueError(f"optimizer {kind!r} has no fused step")
        self.kind = kind
        self.nesterov = nesterov
        self.params = params
        k = params[0].shape[0]
        self.state: dict[str, list[torch.Tensor]] = {
            name: [torch.zeros_like(p, memory_format=torch.contiguous_format).detach() for p in params]
            for name in STATE_KEYS[kind]
        }
        self.steps = torch.zeros(k, dtype=torch.float64)  # per member, as torch counts them
        self.mu_product = torch.ones(k, dtype=torch.float32)  # nadam only
        self.hyper: dict[str, float | torch.Tensor] = {}
        # The fused kernel where the members' own torch optimizers use it (worker/optim.py asks
        # for fused=True; `set_hyperparameters` decides from their param groups).
        self._fused_kernel: bool | None = None
        self._steps32 = torch.zeros(k, dtype=torch.float32, device=params[0].device)
        self._member_views: list[tuple[list[torch.Tensor], ...]] | None = None
        self._rule: Callable[..., None] = getattr(self, f"_{kind}")

    # -- hyperparameters -----------------------------------------------------------------------

    def set_hyperparameters(self, groups: list[dict[str, Any]]) -> None:
        """Each member's current values, from its optimizer's param group (lr follows its schedule)."""
        def column(read: Callable[[dict[str, Any]], float]) -> torch.Tensor:
            return torch.tensor([float(read(g)) for g in groups], dtype=torch.float64)

        self.raw = {
            "lr": column(lambda g: g["lr"]),
            "weight_decay": column(lambda g: g["weight_decay"]),
            "momentum": column(lambda g: g.get("momentum", 0.0)),
            "beta1": column(lambda g: g["betas"][0] if "betas" in g else 0.0),
            "beta2": column(lambda g: g["betas"][1] if "betas" in g else 0.0),
            "eps": column(lambda g: g.get("eps", 0.0)),
        }
        raw = self.raw
        self.hyper = {name: self._values(v) for name, v in raw.items()}
        self.hyper["1-beta1"] = self._values(1 - raw["beta1"])
        self.hyper["1-beta2"] = self._values(1 - raw["beta2"])
        self.hyper["1-lr*weight_decay"] = self._values(1 - raw["lr"] * raw["weight_decay"])
        first = groups[0]
        fused = self.kind in ("adam", "adamw") and all(g.get("fused") for g in groups)
        self._fused_kernel = True if fused and hasattr(torch, "_fused_adam_") else None
        self.constants = {
            "alpha": float(first.get("alpha", 0.99)),
            "rho": float(first.get("rho", 0.9)),
            "lr_decay": float(first.get("lr_decay", 0.0)),
            "momentum_decay": float(first.get("momentum_decay", 4e-3)),
        }

    def _values(self, values: torch.Tensor) -> float | torch.Tensor:
        """Per-member values as one Python float when every member has the same (the usual case
        for all but the searched ones: fewer and cheaper kernels), else (K,) float32 on the device."""
        first = float(values[0])
        if bool((values == first).all()):
            return first
        return values.to(device=self.params[0].device, dtype=self.params[0].dtype)

    @staticmethod
    def _col(values: float | torch.Tensor, p: torch.Tensor) -> float | torch.Tensor:
        """Values shaped to broadcast against a stacked (K, ...) tensor."""
        if isinstance(values, float):
            return values
        return values.view(-1, *([1] * (p.dim() - 1)))

    # -- the step ------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        self._rule()

    def _grads(self) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        return [(p.detach(), p.grad, i) for i, p in enumerate(self.params)]

    def _decayed(self, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        wd = self.hyper["weight_decay"]
        if isinstance(wd, float):
            return g if wd == 0 else g.add(p, alpha=wd)
        return g.addcmul(p, self._col(wd, p))

    def _sgd(self) -> None:
        h = self.hyper
        for p, g, i in self._grads():
            g = self._decayed(p, g)
            buf = self.state["momentum_buffer"][i]
            momentum = self._col(h["momentum"], p)
            # buf starts at 0, so the first step's buf * m + g is torch's clone of g.
            buf.mul_(momentum).add_(g)
            d = g + buf * momentum if self.nesterov else buf
            _add_scaled(p, d, self._col(h["lr"], p), -1)

    def _adam(self, decoupled: bool = False) -> None:
        if self._fused_kernel is not None:
            self._adam_by_kernel(decoupled)
            return
        h, raw = self.hyper, self.raw
        step_size = self._values(raw["lr"] / (1 - raw["beta1"] ** self.steps))
        bc2_sqrt = self._values((1 - raw["beta2"] ** self.steps).sqrt())
        for p, g, i in self._grads():
            if decoupled:
                p.mul_(self._col(h["1-lr*weight_decay"], p))
            else:
                g = self._decayed(p, g)
            exp_avg, exp_avg_sq = self.state["exp_avg"][i], self.state["exp_avg_sq"][i]
            exp_avg.lerp_(g, self._col(h["1-beta1"], p))
            exp_avg_sq.mul_(self._col(h["beta2"], p))
            _addcmul_scaled(exp_avg_sq, g, g, self._col(h["1-beta2"], p))
            denom = exp_avg_sq.sqrt().div_(self._col(bc2_sqrt, p)).add_(self._col(h["eps"], p))
            _addcdiv_scaled(p, exp_avg, denom, self._col(step_size, p), -1)

    def _adam_by_kernel(self, decoupled: bool) -> None:
        """torch's fused Adam/AdamW kernel, the unfused trainer's own, once per member on its
        slices: a single pass over the parameters instead of a dozen broadcast kernels, with each
        member's hyperparameters as the kernel's scalars (so bit for bit the unfused step)."""
        kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
        self._steps32.copy_(self.steps)
        if self._member_views is not None and self._member_views[0][1][0].data_ptr() != self.params[0].grad[0].data_ptr():
            self._member_views = None  # the gradients were replaced, not zeroed: views of the new ones
        if self._member_views is None:
            # Views of each member's slices, made once per stack: the gradients too, which stay
            # the same tensors (the mlp's step writes into them, the cnn's are zeroed in place).
            tensors = [
                [p.detach() for p in self.params],
                [p.grad for p in self.params],
                self.state["exp_avg"],
                self.state["exp_avg_sq"],
            ]
            n = len(self.params)
            self._member_views = [
                (*([t[j] for t in group] for group in tensors), [self._steps32[j]] * n)
                for j in range(self.params[0].shape[0])
            ]
        raw = {name: values.tolist() for name, values in self.raw.items()}
        for j, (params, grads, exp_avgs, exp_avg_sqs, steps) in enumerate(self._member_views):
            kernel(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                [],
                steps,
                amsgrad=False,
                lr=raw["lr"][j],
                beta1=raw["beta1"][j],
                beta2=raw["beta2"][j],
                weight_decay=raw["weight_decay"][j],
                eps=raw["eps"][j],
                maximize=False,
            )

    def _adamw(self) -> None:
        self._adam(decoupled=True)

    def _rmsprop(self) -> None:
        h, alpha = self.hyper, self.constants["alpha"]
        for p, g, i in self._grads():
            g = self._decayed(p, g)
            square_avg = self.state["square_avg"][i]
            square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)
            avg = square_avg.sqrt().add_(self._col(h["eps"], p))
            _addcdiv_scaled(p, g, avg, self._col(h["lr"], p), -1)

    def _adagrad(self) -> None:
        h, raw = self.hyper, self.raw
        clr = self._values(raw["lr"] / (1 + (self.steps - 1) * self.constants["lr_decay"]))
        for p, g, i in self._grads():
            g = self._decayed(p, g)
            state_sum = self.state["sum"][i]
            state_sum.addcmul_(g, g, value=1)
            std = state_sum.sqrt().add_(self._col(h["eps"], p))
            _addcdiv_scaled(p, g, std, self._col(clr, p), -1)

    def _adadelta(self) -> None:
        h, rho = self.hyper, self.constants["rho"]
        for p, g, i in self._grads():
            g = self._decayed(p, g)
            square_avg, acc_delta = self.state["square_avg"][i], self.state["acc_delta"][i]
            eps = self._col(h["eps"], p)
            square_avg.mul_(rho).addcmul_(g, g, value=1 - rho)
            std = (square_avg + eps).sqrt_()
            delta = (acc_delta + eps).sqrt_().div_(std).mul_(g)
            acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
            _add_scaled(p, delta, self._col(h["lr"], p), -1)

    def _adamax(self) -> None:
        h, raw = self.hyper, self.raw
        clr = self._values(raw["lr"] / (1 - raw["beta1"] ** self.steps))
        for p, g, i in self._grads():
            g = self._decayed(p, g)
            exp_avg, exp_inf = self.state["exp_avg"][i], self.state["exp_inf"][i]
            exp_avg.lerp_(g, self._col(h["1-beta1"], p))
            torch.maximum(exp_inf.mul_(self._col(h["beta2"], p)), g.abs().add_(self._col(h["eps"], p)), out=exp_inf)
            _addcdiv_scaled(p, exp_avg, exp_inf, self._col(clr, p), -1)

    def _nadam(self) -> None:
        h, raw, decay = self.hyper, self.raw, self.constants["momentum_decay"]
        bc2 = self._values(1 - raw["beta2"] ** self.steps)
        mu = raw["beta1"] * (1.0 - 0.5 * 0.96 ** (self.steps * decay))
        mu_next = raw["beta1"] * (1.0 - 0.5 * 0.96 ** ((self.steps + 1) * decay))
        self.mu_product.mul_(mu.float())
        mu_product = self.mu_product.double()
        grad_scale = self._values(raw["lr"] * (1.0 - mu) / (1.0 - mu_product))
        avg_scale = self._values(raw["lr"] * mu_next / (1.0 - mu_product * mu_next))
        for p, g, i in self._grads():
            g = self._decayed(p, g)
            exp_avg, exp_avg_sq = self.state["exp_avg"][i], self.state["exp_avg_sq"][i]
            exp_avg.lerp_(g, self._col(h["1-beta1"], p))
            exp_avg_sq.mul_(self._col(h["beta2"], p))
            _addcmul_scaled(exp_avg_sq, g, g, self._col(h["1-beta2"], p))
            denom = exp_avg_sq.div(self._col(bc2, p)).sqrt_().add_(self._col(h["eps"], p))
            _addcdiv_scaled(p, g, denom, self._col(grad_scale, p), -1)
            _addcdiv_scaled(p, exp_avg, denom, self._col(avg_scale, p), -1)

    # -- one member's state, in its own torch optimizer's terms --------------------------------

    def member_state(self, j: int, optimizer: torch.optim.Optimizer) -> dict[torch.Tensor, dict[str, Any]]:
        """Member j's state as `optimizer.state` would hold it after as many steps (copies)."""
        group = optimizer.param_groups[0]
        state: dict[torch.Tensor, dict[str, Any]] = {}
        for i, p in enumerate(group["params"]):
            if self.kind == "sgd":
                if group["momentum"] != 0:
                    state[p] = {"momentum_buffer": self.state["momentum_buffer"][i][j].clone()}
                continue
            on_device = bool(group.get("fused") or group.get("capturable"))
            step = torch.tensor(float(self.steps[j]), dtype=torch.float32, device=p.device if on_device else "cpu")
            entry: dict[str, Any] = {"step": step}
            if self.kind == "nadam":
                entry["mu_product"] = self.mu_product[j].clone()
            for name in STATE_KEYS[self.kind]:
                entry[name] = self.state[name][i][j].clone()
            state[p] = entry
        return state

    def load_member_state(self, j: int, optimizer: torch.optim.Optimizer) -> None:
        """Member j's slice from `optimizer.state` (after its load_state_dict); missing state is zeros."""
        group = optimizer.param_groups[0]
        with torch.no_grad():
            for i, p in enumerate(group["params"]):
                saved = optimizer.state.get(p, {})
                for name in STATE_KEYS[self.kind]:
                    value = saved.get(name)
                    target = self.state[name][i][j]
                    target.copy_(value) if value is not None else target.zero_()
                if "step" in saved:
                    self.steps[j] = float(saved["step"])
                if "mu_product" in saved:
                    self.mu_product[j] = float(saved["mu_product"])

    def export(self, j: int) -> dict[str, Any]:
        """Member j's state, copied out, for `import_member` into the next stack of its group."""
        return {
            "state": {name: [t[j].clone() for t in tensors] for name, tensors in self.state.items()},
            "step": float(self.steps[j]),
            "mu_product": float(self.mu_product[j]),
        }

    def import_member(self, j: int, exported: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, tensors in exported["state"].items():
                for target, value in zip(self.state[name], tensors):
                    target[j].copy_(value)
        self.steps[j] = exported["step"]
        self.mu_product[j] = exported["mu_product"]


def _add_scaled(target: torch.Tensor, x: torch.Tensor, scale: float | torch.Tensor, sign: int) -> None:
    """target += sign * scale * x, with a scalar scale in one kernel."""
    if isinstance(scale, float):
        target.add_(x, alpha=sign * scale)
    else:
        target.add_(x * scale, alpha=sign)


def _addcmul_scaled(target: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float | torch.Tensor) -> None:
    if isinstance(scale, float):
        target.addcmul_(a, b, value=scale)
    else:
        target.add_(a * b * scale)


def _addcdiv_scaled(target: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float | torch.Tensor, sign: int) -> None:
    if isinstance(scale, float):
        target.addcdiv_(a, b, value=sign * scale)
    else:
        target.add_(a / b * scale, alpha=sign)


def clip_per_member(grads: list[torch.Tensor], max_norms: torch.Tensor) -> None:
    """torch.nn.utils.clip_grad_norm_ per member: each member's gradients scaled so their global
    L2 norm is at most its max norm (members with 0 are left alone)."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads], dim=1).norm(dim=1)
    limits = max_norms.to(device=norms.device, dtype=norms.dtype)
    coef = torch.where(limits > 0, (limits / (norms + 1e-6)).clamp(max=1.0), torch.ones_like(norms))
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
