"""Avalanche plugins shared by every method: class masking, gradient sync and clipping, the
learning-rate schedule, mixed precision, and console progress with an ETA."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from avalanche.core import SupervisedPlugin
from tqdm.auto import tqdm

from casdap.engine.optim_factory import TASK_SCHEDULES, build_task_lr_scheduler
from casdap.errors import CasdapError
from casdap.models.logit_mask import class_mask, mask_logits

__all__ = [
    "CurrentClassMaskPlugin",
    "GradSyncPlugin",
    "GradClipPlugin",
    "LRSchedulePlugin",
    "AutocastPlugin",
    "ProgressPlugin",
    "RngRecorderPlugin",
    "MultiScalePlugin",
]


class CurrentClassMaskPlugin(SupervisedPlugin):
    """During training, logits of classes outside the current experience are masked (DAP's masking).

    The masked logits become ``mb_output``, so both the loss and the training accuracy metric see
    what is trained. Evaluation is left alone (every class competes)."""

    supports_distributed = True

    def after_forward(self, strategy, **kwargs):
        logits = strategy.mb_output
        keep = class_mask(strategy.experience.classes_in_this_experience, logits.shape[-1])
        strategy.mb_output = mask_logits(logits, keep)


class GradSyncPlugin(SupervisedPlugin):
    """Averages gradients over the processes of a ``torchrun`` job before every update, so all
    ranks keep identical trainable weights (each rank trains on its own shard of the data)."""

    supports_distributed = True

    def before_update(self, strategy, **kwargs):
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        world = dist.get_world_size()
        grads = [p.grad for p in strategy.model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


class GradClipPlugin(SupervisedPlugin):
    """Clips the global gradient norm before every update (``SOLVER.GRAD_CLIP``)."""

    supports_distributed = True

    def __init__(self, max_norm: float) -> None:
        super().__init__()
        self.max_norm = max_norm

    def before_update(self, strategy, **kwargs):
        params = [p for p in strategy.model.parameters() if p.grad is not None]
        if params:
            torch.nn.utils.clip_grad_norm_(params, self.max_norm)


class LRSchedulePlugin(SupervisedPlugin):
    """Steps the engine's per-iteration task schedule (:func:`casdap.engine.optim_factory.build_task_lr_scheduler`),
    restarted for every experience.

    ``linear`` is DAP's: a linear warmup, then the base rate (its ``WarmupConstantSchedule``; with
    no warmup, constant). ``linear_decay`` decays linearly to zero over the experience, ``cosine``
    follows a half cosine, ``constant`` keeps the base rate after the same warmup. The warmup is
    ``warmup_steps`` iterations, else ``warmup_epochs`` epochs.
    """

    KINDS = TASK_SCHEDULES

    supports_distributed = True

    def __init__(self, kind: str, warmup_epochs: int = 0, warmup_steps: int = 0) -> None:
        super().__init__()
        kind = kind.lower()
        if kind not in self.KINDS:
            raise CasdapError(f"unknown SOLVER.SCHEDULER '{kind}' (use {', '.join(self.KINDS)})")
        self.kind, self.warmup_epochs, self.warmup_steps = kind, warmup_epochs, warmup_steps
        self._told = False
        self.scheduler = None
        self.step = 0

    def before_training_exp(self, strategy, **kwargs):
        self.scheduler, self.step = None, 0

    def before_training_iteration(self, strategy, **kwargs):
        if self.scheduler is None:
            self._make(strategy)
        if self.scheduler is not None:
            self.scheduler.step_update(self.step)

    def after_update(self, strategy, **kwargs):
        self.step += 1

    def _make(self, strategy) -> None:
        per_epoch = max(len(strategy.dataloader), 1)
        total = max(per_epoch * strategy.train_epochs, 1)
        want = self.warmup_steps if self.warmup_steps > 0 else per_epoch * self.warmup_epochs
        warmup = min(want, total - 1)
        if warmup < want and not self._told:
            self._told = True
            tqdm.write(f"casdap cl: a task has {total} steps, so warmup is {warmup} steps, not {want} "
                       "(the schedule restarts with every task)")
        self.scheduler = build_task_lr_scheduler(self.kind, strategy.optimizer, total, warmup)


class AutocastPlugin(SupervisedPlugin):
    """bfloat16 autocast around every forward pass (``USE_AMP``); outputs and losses stay in float32.

    The strategy's ``forward`` is wrapped in ``with torch.autocast(...)`` when training or evaluation
    starts, so autocast is left however the forward ends (an exception included). bfloat16 has
    float32's range, so no loss scaling is needed and every Avalanche strategy keeps its own
    backward and optimizer step. GPUs without bfloat16 (before Ampere) are refused.
    """

    supports_distributed = True

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device_type = torch.device(device).type
        if self.device_type == "cuda" and not torch.cuda.is_bf16_supported():
            raise CasdapError(
                f"USE_AMP needs bfloat16, which {torch.cuda.get_device_name(device)} does not support; "
                "set USE_AMP False (or --use_amp False) on this GPU"
            )

    def _wrap(self, strategy) -> None:
        inner = strategy.forward
        if getattr(inner, "_autocast_of", None) is self:
            return
        device_type = self.device_type

        def forward():
            with torch.autocast(device_type, dtype=torch.bfloat16):
                out = inner()
            return out.float() if isinstance(out, torch.Tensor) else out

        forward._autocast_of = self
        strategy.forward = forward

    def before_training(self, strategy, **kwargs):
        self._wrap(strategy)

    def before_eval(self, strategy, **kwargs):
        self._wrap(strategy)


class ProgressPlugin(SupervisedPlugin):
    """A tqdm bar per epoch, with the ETA of the whole run (all remaining epochs and tasks).

    The running loss is added up on the device and read back every ``log_every`` iterations
    (``SOLVER.LOG_EVERY_N``) and at the end of each epoch, so a training step does not wait for
    the device to show it. Every ``log_every`` iterations a line with the running loss is printed
    where no bar is shown (``enabled=False``) and ``verbose``; each epoch ends with a line.
    """

    supports_distributed = True

    def __init__(self, n_tasks: int, enabled: bool = True, log_every: int = 0, verbose: bool | None = None) -> None:
        super().__init__()
        self.n_tasks, self.enabled = n_tasks, enabled
        self.log_every = max(int(log_every), 0)
        self.verbose = enabled if verbose is None else verbose
        self.bar = None
        self.seconds_per_epoch: list[float] = []
        self.epoch_start = 0.0
        self.task = 0
        self.epoch = 0
        self.loss_sum: torch.Tensor | float = 0.0
        self.count = 0
        self.iteration = 0

    def before_training_exp(self, strategy, **kwargs):
        self.task = strategy.experience.current_experience
        self.epoch = 0

    def before_training_epoch(self, strategy, **kwargs):
        self.epoch_start = time.perf_counter()
        self.loss_sum, self.count, self.iteration = 0.0, 0, 0
        if self.enabled:
            epoch = self.epoch
            eta = self._eta(strategy, epoch)
            desc = f"task {self.task + 1}/{self.n_tasks} epoch {epoch + 1}/{strategy.train_epochs}"
            if eta is not None:
                desc += f" (run ETA {eta})"
            self.bar = tqdm(total=len(strategy.dataloader), desc=desc, leave=False, dynamic_ncols=True)

    def _mean_loss(self) -> float:
        return float(self.loss_sum) / max(self.count, 1)

    def after_training_iteration(self, strategy, **kwargs):
        self.loss_sum = self.loss_sum + strategy.loss.detach() * len(strategy.mb_y)
        self.count += len(strategy.mb_y)
        self.iteration += 1
        due = self.log_every > 0 and self.iteration % self.log_every == 0
        if self.bar is not None:
            self.bar.update(1)
            if due:
                self.bar.set_postfix(loss=f"{self._mean_loss():.4f}")
        elif due and self.verbose:
            tqdm.write(f"task {self.task + 1}/{self.n_tasks} epoch {self.epoch + 1}/{strategy.train_epochs} "
                       f"iteration {self.iteration}/{len(strategy.dataloader)}: loss {self._mean_loss():.4f}")

    def after_training_epoch(self, strategy, **kwargs):
        self.seconds_per_epoch.append(time.perf_counter() - self.epoch_start)
        self.epoch += 1
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            tqdm.write(
                f"task {self.task + 1}/{self.n_tasks} epoch {self.epoch}/{strategy.train_epochs}: "
                f"loss {self._mean_loss():.4f}, {self.seconds_per_epoch[-1]:.1f}s"
            )

    def _eta(self, strategy, epoch: int) -> str | None:
        if not self.seconds_per_epoch:
            return None
        recent = sorted(self.seconds_per_epoch[-5:])[len(self.seconds_per_epoch[-5:]) // 2]
        left = (strategy.train_epochs - epoch) + (self.n_tasks - self.task - 1) * strategy.train_epochs
        seconds = int(recent * left)
        return f"{seconds // 60}m{seconds % 60:02d}s"


class RngRecorderPlugin(SupervisedPlugin):
    """Records the torch RNG state at the end of each experience, before the replay buffer is
    updated, so a resumed run can rebuild exactly the same buffer. Must come before ReplayPlugin."""

    supports_distributed = True

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[int, torch.Tensor] = {}

    def after_training_exp(self, strategy, **kwargs):
        self.states[strategy.experience.current_experience] = torch.get_rng_state()


class MultiScalePlugin(SupervisedPlugin):
    """CAS-ViT's multi-scale training for the continual path: every training batch is resized to a
    side drawn from the multi-scale sampler's choices (5/7 to 10/7 of the crop size, multiples of
    32, as 160-320 px around 224), so the prompt side and the keys see several resolutions. The
    frozen backbone and the prompt generator work at any size; evaluation stays at the crop size.
    The draw depends only on ``seed`` and the iteration count, so resumed runs draw the same sizes.
    """

    supports_distributed = True

    def __init__(self, crop_size: int, seed: int = 0) -> None:
        super().__init__()
        from casdap.data.samplers import scale_batch_pairs

        lo, hi = round(crop_size * 160 / 224), round(crop_size * 320 / 224)
        self.sides = sorted({h for h, _, _ in scale_batch_pairs(crop_size, crop_size, 1, lo, hi, lo, hi)})
        self.seed = seed

    def before_forward(self, strategy, **kwargs):
        step = int(strategy.clock.train_iterations)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        side = self.sides[int(torch.randint(len(self.sides), (1,), generator=gen))]
        x = strategy.mbatch[0]
        if x.shape[-1] != side or x.shape[-2] != side:
            strategy.mbatch[0] = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear",
                                                                 align_corners=False, antialias=True)
