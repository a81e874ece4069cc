"""Running averages that are summed across ranks at the end of an epoch."""

from __future__ import annotations

import torch
import torch.distributed as dist

from casdap.engine.distributed import is_dist


class Meter:
    def __init__(self) -> None:
        self.total, self.count, self.last = 0.0, 0.0, 0.0

    def update(self, value: float, n: float = 1) -> None:
        self.last = float(value)
        self.total += float(value) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.total / self.count if self.count else float("nan")


class MetricLogger:
    """Named :class:`Meter` s; ``synchronize`` sums totals and counts over all ranks."""

    def __init__(self) -> None:
        self.meters: dict[str, Meter] = {}

    def update(self, n: float = 1, **values: float | None) -> None:
        for k, v in values.items():
            if v is not None:
                self.meters.setdefault(k, Meter()).update(v, n)

    def synchronize(self, device: torch.device) -> None:
        if not is_dist():
            return
        names = sorted(self.meters)
        t = torch.tensor([[self.meters[k].total, self.meters[k].count] for k in names], dtype=torch.float64,
                         device=device)
        dist.all_reduce(t)
        for k, (total, count) in zip(names, t.tolist()):
            self.meters[k].total, self.meters[k].count = total, count

    def averages(self) -> dict[str, float]:
        return {k: m.avg for k, m in self.meters.items()}

    def line(self) -> str:
        return "  ".join(f"{k}: {m.last:.4f} ({m.avg:.4f})" for k, m in self.meters.items())
