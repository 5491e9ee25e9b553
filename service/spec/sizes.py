"""The size checks of a whole definition (service/spec/limits.py has the bounds and why)."""

from __future__ import annotations

import math
from typing import Any

from service.spec.limits import MAX_CHOICES, MAX_GRID_POINTS, MAX_PARAMS, MAX_SEED, MAX_SPACE_CHOICES
from service.spec.space import CategoricalParam, ConditionalParam, FloatParam, IntParam


def check_space(space: dict[str, Any]) -> None:
    if len(space) > MAX_PARAMS:
        raise ValueError(f"space: {len(space)} parameters; at most {MAX_PARAMS}")
    choices = 0
    for param in space.values():
        if isinstance(param, CategoricalParam):
            choices += len(param.choices)
        elif isinstance(param, ConditionalParam):
            choices += param.n_choices()
    if choices > MAX_SPACE_CHOICES:
        raise ValueError(f"space: {choices} categorical choices in all; at most {MAX_SPACE_CHOICES} (MAX_SPACE_CHOICES)")


def check_grid(space: dict[str, Any]) -> None:
    """A grid is every combination of its axes: bounded per axis and as a product, before a claim
    ever sees it (the review's grid over int 0..10^9 OOM-killed the API on its first claim)."""
    sizes: dict[str, int] = {}
    for name, param in sorted(space.items()):
        if isinstance(param, (CategoricalParam, FloatParam, IntParam)):
            sizes[name] = param.grid_size()
            if sizes[name] > MAX_CHOICES:
                raise ValueError(
                    f"space.{name}: a grid axis of {sizes[name]} points; at most {MAX_CHOICES} per axis and "
                    f"{MAX_GRID_POINTS} points in all (MAX_GRID_POINTS): use a larger step, or the random, qmc or tpe sampler"
                )
    points = math.prod(sizes.values())
    if points > MAX_GRID_POINTS:
        axes = " x ".join(f"{name} {size}" for name, size in sizes.items())
        raise ValueError(
            f"space: the grid has {points} points ({axes}); at most {MAX_GRID_POINTS} (MAX_GRID_POINTS): "
            f"use fewer or coarser axes, or the random, qmc or tpe sampler"
        )


def check_seed(seed: int | None, n_trials: int) -> None:
    """A sampler's seed advances by one per claim (factories.build_sampler), and numpy takes
    seeds in [0, 2^32 - 1]: the last claim's seed must still be one."""
    if seed is None:
        return
    top = MAX_SEED - n_trials
    if not 0 <= seed <= top:
        raise ValueError(f"sampler.seed: must be between 0 and {top} (2^32 - 1 - budget.n_trials, as the seed advances per claim), got {seed}")


def bruteforce_size(space: dict[str, Any], fixed: dict[str, Any]) -> int:
    """How many distinct trials the brute-force sampler can make of this space: every axis's
    points, where a conditional parameter multiplies in only under the parent values that have
    a case for it (`fixed`: the workload's values, for a parent that is not searched)."""

    def points(name: str, param: Any) -> int:
        if isinstance(param, FloatParam) and param.step is None:
            raise ValueError(f"space.{name}: the bruteforce sampler needs a discrete space: give the float a step, or make it categorical")
        return int(param.grid_size())

    children: dict[str, list[tuple[str, ConditionalParam]]] = {}
    for name, param in space.items():
        if isinstance(param, ConditionalParam):
            children.setdefault(param.on, []).append((name, param))
            for key, case in param.cases.items():
                points(f"{name}.cases.{key}", case)
    size = 1
    for name, param in space.items():
        if isinstance(param, ConditionalParam):
            continue
        if name not in children:
            size *= points(name, param)
            continue
        assert isinstance(param, CategoricalParam)  # the spec allows only categorical parents
        size *= sum(_cases_product(children[name], choice) for choice in param.choices)
    for parent, kids in children.items():
        if parent not in space:
            size *= _cases_product(kids, fixed.get(parent))
    return size


def _cases_product(kids: list[tuple[str, ConditionalParam]], parent_value: Any) -> int:
    product = 1
    for _, kid in kids:
        case = kid.case_for(parent_value)
        if case is not None:
            product *= case.grid_size()
    return product
