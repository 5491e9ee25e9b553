"""Each fused member's dropout masks: the very masks its unfused run would draw.

Alone, a trial draws its masks from torch's global RNG, seeded by the workload seed and then
advanced by the model's initialisation. Fused, each member holds that RNG state in generators of
its own (`MemberRng`) and draws from them the way the unfused path it replaces does:
  - the mlp (worker/mlp_step.py's fast step): per window of batches, one seed from torch's RNG
    for numpy's PCG64, then `uniform >= p` per hidden layer, scaled by 1 / (1 - p);
  - the cnn (nn.Dropout before the classifier): per batch, `bernoulli_(1 - p)` of the features'
    shape, divided by 1 - p, as F.dropout does.
The same seed, dropout rate and shapes give the same masks, so a member's losses match its
unfused run's (tests/test_fused_trainer.py).
"""

from __future__ import annotations

import torch

from worker.mlp_step import mask_window_rows, uniform_source


class MemberRng:
    """Where the unfused run's global RNG would be: torch's CPU generator, and on CUDA the device's."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.Generator()
        self.device = torch.Generator(device=device) if device.type != "cpu" else None

    def capture(self) -> None:
        """Take over the global RNG's state as it is now (right after the member's model was built)."""
        self.cpu.set_state(torch.get_rng_state())
        if self.device is not None:
            self.device.set_state(torch.cuda.get_rng_state(self.device.device))

    def for_device(self) -> torch.Generator:
        return self.cpu if self.device is None else self.device


class WindowMasks:
    """The mlp fast step's masks for one member (MlpStep._masks_for, with the member's RNG)."""

    def __init__(self, rng: MemberRng, dropout: float, widths: list[int], batch: int, device: torch.device) -> None:
        self.rng, self.p, self.batch, self.device = rng, dropout, batch, device
        self.hidden = widths[:-1]
        self.rows = mask_window_rows(batch, max(widths))

    def window(self, start: int, n_rows: int) -> list[torch.Tensor] | None:
        """The masks of rows [start, start + rows) of the epoch, one (rows, width) per hidden layer;
        None without dropout (the unfused step still draws its window's seed then)."""
        end = min(start + self.rows, n_rows)
        generator = self.rng.cpu if self.device.type == "cpu" else self.rng.for_device()
        uniform = uniform_source(self.device, generator)
        if self.p == 0:
            return None
        return [uniform(end - start, width).ge_(self.p).mul_(1.0 / (1.0 - self.p)) for width in self.hidden]


def bernoulli_mask(rng: MemberRng, dropout: float, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """F.dropout's noise for one batch of one member: bernoulli(1 - p), divided by 1 - p."""
    noise = torch.empty(shape, device=device).bernoulli_(1 - dropout, generator=rng.for_device())
    return noise.div_(1 - dropout)
