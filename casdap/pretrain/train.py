"""Pretrain a CAS-ViT backbone offline on a synthetic source (no download, no digit ever seen).

The result is an ordinary checkpoint in the official layout (``{"model": state_dict}``, head for
the source's classes) that ``casdap.load_checkpoint(model, path, finetune=True)`` loads into a
backbone with any class count, plus a JSON sidecar beside it (same name, ``.json``) recording
exactly what the backbone saw.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from casdap.checkpoint import save_checkpoint
from casdap.errors import CasdapError
from casdap.files import write_json
from casdap.models import create_model
from casdap.pretrain.protocol import DEFAULT_PROTOCOL
from casdap.pretrain.sources import INPUT_MEAN, INPUT_STD, SOURCES, build_source, normalize_input

__all__ = ["DEFAULT_PROTOCOL", "pretrain_backbone", "sidecar_path"]



def sidecar_path(checkpoint_path: str | os.PathLike) -> Path:
    """Where the description of a pretrained checkpoint lives: ``<name>.json`` beside it."""
    return Path(checkpoint_path).with_suffix(".json")



def _shift_classes_seen(class_names: list[str]) -> list[str]:
    """The embedded_shift stream's characters among a source's class names (``"set/char"`` or ``"char"``)."""
    from casdap.data.glyph_stream import shift_characters

    stream = set(shift_characters())
    return sorted({n.rsplit("/", 1)[-1] for n in class_names} & stream)


def _check_args(model_name: str, epochs: int, source: str, images_per_class: int, batch_size: int,
                lr: float) -> None:
    from casdap.models import list_models

    if model_name not in list_models():
        create_model(model_name)  # raises the standard unknown-model message with a suggestion
    if source not in SOURCES:
        raise CasdapError(f"unknown pretraining source '{source}'; choose from {', '.join(SOURCES)}")
    for name, value in (("epochs", epochs), ("images per class", images_per_class), ("batch size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise CasdapError(f"{name} must be a positive integer (got {value!r})")
    if not lr > 0:
        raise CasdapError(f"learning rate must be positive (got {lr!r})")


def _check_out_path(out_path: Path) -> None:
    """Fail before training, not after it, when the checkpoint cannot be written."""
    if out_path.is_dir():
        raise CasdapError(f"output '{out_path}' is a directory; give a file path such as {out_path / 'rcvit_xs.pth'}")
    for parent in out_path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CasdapError(f"cannot write '{out_path}': '{parent}' is a file, not a directory")
            if not os.access(parent, os.W_OK):
                raise CasdapError(f"cannot write '{out_path}': no write permission in '{parent}'")
            break


def pretrain_backbone(
    model_name: str = "rcvit_xs",
    out_path: str | os.PathLike = "model/rcvit_xs.pth",
    epochs: int = DEFAULT_PROTOCOL["epochs"],
    seed: int = 0,
    source: str = DEFAULT_PROTOCOL["source"],
    images_per_class: int = DEFAULT_PROTOCOL["images_per_class"],
    batch_size: int = DEFAULT_PROTOCOL["batch_size"],
    lr: float = DEFAULT_PROTOCOL["lr"],
    weight_decay: float = DEFAULT_PROTOCOL["weight_decay"],
    warmup_epochs: int = DEFAULT_PROTOCOL["warmup_epochs"],
    label_smoothing: float = DEFAULT_PROTOCOL["label_smoothing"],
    progress: bool = True,
    on_epoch_end: Callable[[int, nn.Module], dict | None] | None = None,
) -> dict:
    """Train ``model_name`` (single head, no distillation) as a classifier of a synthetic source
    and save it to ``out_path``; returns the sidecar dict (also written to ``sidecar_path``).

    Every epoch draws fresh images (``images_per_class`` per class) from the source, so more
    epochs means more distinct images, not repeats. AdamW with a per-step cosine schedule and
    linear warmup (timm), label smoothing. ``on_epoch_end(epoch, model)`` may return a dict of
    extra numbers that are stored in the sidecar's per-epoch log (used by the measurements); its
    time is excluded from the recorded wall time.
    """
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from tqdm import tqdm

    _check_args(model_name, epochs, source, images_per_class, batch_size, lr)
    out_path = Path(out_path)
    _check_out_path(out_path)
    start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    src = build_source(source, images_per_class, seed)
    model = create_model(model_name, num_classes=src.num_classes, distillation=False)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-src.num_classes * images_per_class // batch_size)
    total_steps = epochs * steps_per_epoch
    warmup_steps = min(warmup_epochs * steps_per_epoch, max(total_steps - 1, 0))
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=lr * 1e-2, warmup_t=warmup_steps,
                                  warmup_lr_init=lr * 1e-2, t_in_epochs=False)
    shuffle = torch.Generator().manual_seed(seed)
    log: list[dict] = []
    seen = 0
    step = 0
    callback_s = callback_cpu_s = 0.0  # time spent in on_epoch_end, not part of the pretraining time
    bar = tqdm(total=total_steps, desc=f"pretrain {model_name} on {source}", unit="step", disable=not progress,
               dynamic_ncols=True)
    for epoch in range(epochs):
        model.train()
        x, y = src.sample(epoch)
        x = normalize_input(x)
        order = torch.randperm(len(y), generator=shuffle)
        total_loss, correct = 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx], label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == y[idx]).sum().item()
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{loss.item():.3f}")
        seen += len(y)
        entry = {"epoch": epoch + 1, "train_loss": total_loss / len(y), "train_acc": correct / len(y),
                 "elapsed_s": round(time.perf_counter() - start - callback_s, 2),
                 "cpu_s": round(time.process_time() - cpu_start - callback_cpu_s, 2)}
        if on_epoch_end is not None:
            t0, c0 = time.perf_counter(), time.process_time()
            entry.update(on_epoch_end(epoch + 1, model) or {})
            callback_s += time.perf_counter() - t0
            callback_cpu_s += time.process_time() - c0
        log.append(entry)
    bar.close()
    wall = time.perf_counter() - start - callback_s
    cpu = time.process_time() - cpu_start - callback_cpu_s
    model.eval()
    save_checkpoint({"model": model.state_dict()}, out_path)
    sidecar = {
        "checkpoint": out_path.name,
        "model": model_name,
        "what_the_backbone_saw": src.describe(),
        "digits_seen": False,
        # the embedded_shift stream's classes among the pretraining classes (by construction none)
        "embedded_shift_classes_seen": _shift_classes_seen(src.class_names),
        "images_seen": seen,
        "distinct_images": seen,
        "epochs": epochs,
        "seed": seed,
        "input": {"size": src.image_size, "range": [0, 1], "mean": [INPUT_MEAN] * 3, "std": [INPUT_STD] * 3},
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
                      "schedule": "cosine per step", "warmup_epochs": warmup_epochs,
                      "label_smoothing": label_smoothing},
        "head_classes": src.num_classes,
        "wall_time_s": round(wall, 2),
        "cpu_time_s": round(cpu, 2),  # all threads of this process; robust to other load on the machine
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "log": log,
    }
    write_json(sidecar_path(out_path), sidecar)
    return sidecar
