"""Trial-slot processes for the training benchmarks (bench/gpu_packing.py, bench/fused.py).

n processes (multiprocessing, spawn: CUDA cannot be forked), started once. Process i runs
`target(i, *args, commands, barriers, results)`: it takes commands from its own queue until None,
puts what it measured on the shared `results` queue, and before a timed part waits on
`barriers[k]`, the barrier of a configuration that uses k slots (k + 1 parties: the k slots and
the script, which starts its clock when all are past it). The slots a configuration leaves out
wait idle on their queues."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any


class SlotPool:
    def __init__(self, n: int, target: Callable[..., None], *args: Any) -> None:
        ctx = mp.get_context("spawn")
        self.barriers = {k: ctx.Barrier(k + 1) for k in range(1, n + 1)}
        self.commands = [ctx.Queue() for _ in range(n)]
        self.results = ctx.Queue()
        self.procs = [
            ctx.Process(target=target, args=(i, *args, self.commands[i], self.barriers, self.results), daemon=True)
            for i in range(n)
        ]
        for p in self.procs:
            p.start()

    def close(self) -> None:
        for q, p in zip(self.commands, self.procs):
            if p.is_alive():
                q.put(None)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()  # only our own children
                p.join()
