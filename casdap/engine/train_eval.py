"""One training epoch and one evaluation pass (the ConvNeXt/DeiT/CAS-ViT ``engine.py`` split)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
import torch.nn as nn
from timm.utils import accuracy

from casdap.engine.distributed import all_ranks_true, log
from casdap.engine.metrics import MetricLogger
from casdap.engine.optim_factory import WeightDecaySchedule
from casdap.errors import CasdapError


class NonFiniteLossError(CasdapError):
    """The loss became NaN or infinite; training stops before the step is applied."""


def autocast(device: torch.device, use_amp: bool):
    """bf16 autocast on CPU, fp16 on CUDA (paired with a grad scaler), nothing without AMP."""
    if not use_amp:
        return nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _loss(criterion: Callable, output, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and logits; a model with a distillation head returns two outputs in training, and
    without a teacher both heads learn the same targets."""
    if isinstance(output, (tuple, list)):
        loss = sum(criterion(o, targets) for o in output) / len(output)
        return loss, sum(output) / len(output)
    return criterion(output, targets), output


def train_one_epoch(
    model: nn.Module,
    criterion: Callable,
    data_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    scaler: torch.amp.GradScaler,
    *,
    max_norm: float | None = None,
    model_ema=None,
    mixup_fn: Callable | None = None,
    log_writer=None,
    start_steps: int = 0,
    lr_scheduler=None,
    wd_schedule: WeightDecaySchedule | None = None,
    steps_per_epoch: int,
    update_freq: int = 1,
    use_amp: bool = False,
    print_freq: int = 100,
) -> dict[str, float]:
    """Train for one epoch of ``steps_per_epoch`` optimizer steps (``update_freq`` micro-batches each).

    Returns epoch averages over all ranks plus ``images`` (total seen) and ``time_s``.
    """
    model.train(True)
    metrics = MetricLogger()
    optimizer.zero_grad(set_to_none=True)
    images, start = 0, time.perf_counter()
    n_batches = steps_per_epoch * update_freq
    for data_iter_step, (samples, targets) in enumerate(data_loader):
        if data_iter_step >= n_batches:
            break
        step = data_iter_step // update_freq
        it = start_steps + step
        first_micro = data_iter_step % update_freq == 0
        last_micro = (data_iter_step + 1) % update_freq == 0
        if first_micro:
            if lr_scheduler is not None:
                lr_scheduler.step_update(it)
            if wd_schedule is not None:
                wd_schedule.apply(optimizer, it)

        samples = samples.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        hard_targets = targets
        if mixup_fn is not None:
            samples, targets = mixup_fn(samples, targets)

        # Gradients are all-reduced only on the last micro-batch of an accumulation.
        sync = nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, use_amp):
                output = model(samples)
                loss, logits = _loss(criterion, output, targets)
            loss_value = loss.item()
            if not all_ranks_true(torch.isfinite(loss.detach()).item(), device):
                raise NonFiniteLossError(
                    f"loss is {loss_value} at epoch {epoch}, step {step} (micro-batch {data_iter_step}, global "
                    f"step {it}); stopped before applying it. Lower --lr, set --clip_grad, or try --use_amp False"
                )
            scaler.scale(loss / update_freq).backward()

        grad_norm = None
        if last_micro:
            if max_norm:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if model_ema is not None:
                ema_model = model.module if hasattr(model, "module") else model
                model_ema.update(ema_model, step=it)

        batch = samples.shape[0]
        images += batch
        class_acc = None
        if mixup_fn is None:
            class_acc = (logits.detach().argmax(-1) == hard_targets).float().mean().item()
        lrs = [g["lr"] for g in optimizer.param_groups]
        wds = [g["weight_decay"] for g in optimizer.param_groups if g.get("weight_decay", 0) > 0]
        metrics.update(n=batch, loss=loss_value, class_acc=class_acc)
        metrics.update(lr=max(lrs), min_lr=min(lrs), weight_decay=wds[0] if wds else 0.0, grad_norm=grad_norm)
        if log_writer is not None and last_micro:
            log_writer.add_scalar("loss/loss", loss_value, it)
            if class_acc is not None:
                log_writer.add_scalar("loss/class_acc", class_acc, it)
            log_writer.add_scalar("opt/lr", max(lrs), it)
            log_writer.add_scalar("opt/min_lr", min(lrs), it)
            log_writer.add_scalar("opt/weight_decay", wds[0] if wds else 0.0, it)
            if grad_norm is not None:
                log_writer.add_scalar("opt/grad_norm", grad_norm, it)
        if print_freq > 0 and (data_iter_step % print_freq == 0 or data_iter_step == n_batches - 1):
            log(f"Epoch: [{epoch}] [{data_iter_step + 1}/{n_batches}] {tuple(samples.shape[-2:])} "
                f"loss {loss_value:.4f} lr {max(lrs):.6f}" + (f" acc {class_acc:.3f}" if class_acc is not None else ""))

    elapsed = time.perf_counter() - start
    metrics.update(n=1, images=images)
    metrics.synchronize(device)
    stats = metrics.averages()
    stats["images"] = metrics.meters["images"].total if "images" in metrics.meters else 0.0
    stats["time_s"] = elapsed
    log("Averaged stats: " + "  ".join(f"{k}: {v:.4f}" for k, v in stats.items() if k not in ("images", "time_s")))
    return stats


@torch.no_grad()
def evaluate(data_loader: Iterable, model: nn.Module, device: torch.device, use_amp: bool = False,
             header: str = "", print_result: bool = True) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and per-image mean cross-entropy over the loader, summed over ranks.

    Prints the CAS-ViT result line ``* Acc@1 a Acc@5 b loss c`` on rank 0 (unless ``print_result``
    is False).
    """
    criterion = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    metrics = MetricLogger()
    for images, target in data_loader:
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        with autocast(device, use_amp):
            output = model(images)
        output = output.float()
        loss = criterion(output, target)
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        n = images.shape[0]
        metrics.update(n=n, acc1=acc1.item(), acc5=acc5.item())
        metrics.update(n=n, loss=loss.item() / n)
    metrics.synchronize(device)
    stats = metrics.averages()
    if print_result:
        log(f"{header}* Acc@1 {stats['acc1']:.3f} Acc@5 {stats['acc5']:.3f} loss {stats['loss']:.3f}")
    return stats
