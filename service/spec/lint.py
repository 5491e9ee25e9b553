"""Warnings, never errors, for search-space choices that are usually wrong.

Each rule comes from ../shared/HYPERPARAMETERS.md; the study is created anyway, because a
team may have its reasons (a sensitivity sweep on a linear grid, say)."""

from __future__ import annotations

from typing import Any

from service.spec import presets
from service.spec.hyperparameters import USUAL_LR, defaults_for
from service.spec.space import CategoricalParam, ConditionalParam, FloatParam, IntParam, PlainParam, case_key
from service.spec.study import StudySpec


def lint(spec: StudySpec) -> list[str]:
    warnings: list[str] = []
    for check in (_log_scales, _batch_size_scale, _dropout, _lr_vs_optimizer, _dropout_before_batchnorm, _tiny_batchnorm, _nesterov):
        warnings.extend(check(spec))
    return warnings


def _plain_cases(param: Any) -> list[tuple[str, PlainParam]]:
    """A parameter's plain ranges, each with the suffix that names it in a message."""
    if isinstance(param, ConditionalParam):
        return [(f".cases.{key}", case) for key, case in param.cases.items()]
    return [("", param)] if param is not None else []


def _possible_values(spec: StudySpec, name: str) -> list[Any]:
    """The values a categorical-ish parameter can take: its choices, or its fixed value/default."""
    param = spec.space.get(name)
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    if param is not None:
        return []  # a range (or conditional): no finite list of values
    fixed = {**defaults_for(spec.workload.model), **spec.workload.fixed}
    return [fixed[name]] if name in fixed else []


def _log_scales(spec: StudySpec) -> list[str]:
    out = []
    for name in ("lr", "weight_decay"):
        for suffix, p in _plain_cases(spec.space.get(name)):
            if isinstance(p, FloatParam) and not p.log and p.step is None:
                out.append(
                    f"space.{name}{suffix}: searched on a linear scale; its useful values span orders of magnitude, "
                    f"so set log: true (a linear range over [{p.low:g}, {p.high:g}] spends almost every trial near the top)"
                )
    return out


def _batch_size_scale(spec: StudySpec) -> list[str]:
    out = []
    for suffix, p in _plain_cases(spec.space.get("batch_size")):
        if isinstance(p, IntParam) and not p.log and p.high > 100 * max(p.low, 1):
            out.append(
                f"space.batch_size{suffix}: linear over more than two orders of magnitude ({p.low}-{p.high}); "
                "set log: true so small and large batches are sampled alike"
            )
    return out


def _dropout(spec: StudySpec) -> list[str]:
    out = []
    for suffix, p in _plain_cases(spec.space.get("dropout")):
        top = p.high if isinstance(p, (FloatParam, IntParam)) else max((c for c in p.choices if isinstance(c, (int, float))), default=0)
        if top > 0.5:
            out.append(f"space.dropout{suffix}: goes up to {top:g}; dropout above 0.5 usually hurts (usual range 0.2-0.5)")
    fixed = spec.workload.fixed.get("dropout")
    if isinstance(fixed, (int, float)) and fixed > 0.5:
        out.append(f"workload.dropout: {fixed:g} is above 0.5, which usually hurts (usual range 0.2-0.5)")
    return out


def _usual_range(spec: StudySpec, optimizer: str) -> tuple[str, tuple[float, float]] | None:
    key = optimizer
    if optimizer == "sgd":
        momenta = _possible_values(spec, "momentum")
        if spec.space.get("momentum") is not None and not momenta:
            momenta = [0.0, 0.9]  # searched as a range: either regime is possible
        if momenta and all(isinstance(m, (int, float)) and m > 0 for m in momenta):
            key = "sgd_momentum"
        elif momenta and any(isinstance(m, (int, float)) and m > 0 for m in momenta):
            low = min(USUAL_LR["sgd_momentum"][0], USUAL_LR["sgd"][0])
            return "sgd (with or without momentum)", _finetuned((low, USUAL_LR["sgd"][1]), spec.finetune)
    if key not in USUAL_LR:
        return None
    label = "sgd with momentum" if key == "sgd_momentum" else key
    return label, (presets.lr_range(key, spec.finetune))


def _finetuned(r: tuple[float, float], finetune: bool) -> tuple[float, float]:
    return (r[0] * presets.FINETUNE_LOW, r[1] * presets.FINETUNE_HIGH) if finetune else r


def _lr_vs_optimizer(spec: StudySpec) -> list[str]:
    lr = spec.space.get("lr")
    ranges: list[tuple[str, str, float, float]] = []  # (where, optimizer, low, high)
    if isinstance(lr, ConditionalParam) and lr.on == "optimizer":
        for key, case in lr.cases.items():
            if isinstance(case, (FloatParam, IntParam)):
                ranges.append((f"space.lr.cases.{key}", key, case.low, case.high))
    else:
        if isinstance(lr, (FloatParam, IntParam)):
            low, high, where = lr.low, lr.high, "space.lr"
        elif lr is None and isinstance(spec.workload.fixed.get("lr"), (int, float)):
            low = high = spec.workload.fixed["lr"]
            where = "workload.lr"
        else:
            return []
        for optimizer in _possible_values(spec, "optimizer"):
            ranges.append((where, case_key(optimizer), low, high))
    out = []
    for where, optimizer, low, high in ranges:
        usual = _usual_range(spec, optimizer)
        if usual is None:
            continue
        label, (u_low, u_high) = usual
        if high < u_low or low > u_high:
            shown = f"{low:g}" if low == high else f"[{low:g}, {high:g}]"
            out.append(
                f"{where}: {shown} misses the usual initial range for {label} entirely "
                f"({u_low:g}-{u_high:g}{', fine-tuning' if spec.finetune else ''}); widen or move it"
            )
    return out


def _batchnorm_possible(spec: StudySpec) -> bool:
    values = _possible_values(spec, "batchnorm")
    return True in values


def _dropout_before_batchnorm(spec: StudySpec) -> list[str]:
    if spec.workload.model != "mlp" or not _batchnorm_possible(spec):
        return []
    block = spec.workload.block
    if block.index("dropout") + 1 != block.index("batchnorm"):
        return []
    return [
        "workload.block: dropout sits directly before batchnorm. Dropout scales the surviving activations "
        "during training, so BatchNorm learns running statistics of a variance the layer never sees at "
        "inference (the variance shift), and the model can collapse at evaluation; put dropout after "
        "the activation, e.g. [linear, batchnorm, relu, dropout]"
    ]


def _tiny_batchnorm(spec: StudySpec) -> list[str]:
    if spec.workload.model not in ("mlp", "cnn") or not _batchnorm_possible(spec):
        return []
    smallest = [p.low for _, p in _plain_cases(spec.space.get("batch_size")) if isinstance(p, IntParam)]
    smallest += [v for v in _possible_values(spec, "batch_size") if isinstance(v, int)]
    if smallest and min(smallest) < 8:
        return [
            f"batch_size: can be {min(smallest)} while batchnorm is on; tiny batches make BatchNorm's statistics "
            "noise (raise batch_size's lower bound to 8 or more, or turn batchnorm off)"
        ]
    return []


def _nesterov(spec: StudySpec) -> list[str]:
    if True not in _possible_values(spec, "nesterov"):
        return []
    momentum = spec.space.get("momentum")
    zero = any(m == 0 for m in _possible_values(spec, "momentum")) or any(
        isinstance(p, (FloatParam, IntParam)) and p.low <= 0 for _, p in _plain_cases(momentum)
    )
    if not zero:
        return []
    return ["nesterov: can be true while momentum can be 0; torch refuses Nesterov without momentum, so those trials will fail"]
