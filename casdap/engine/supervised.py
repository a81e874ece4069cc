"""Supervised CAS-ViT training and evaluation: the trainer behind ``main.py`` / ``casdap train``.

Takes the parsed flags of the official CAS-ViT classification ``main.py``
(:mod:`casdap.cli.casvit_args`); runs alone or under ``python -m torch.distributed.run`` (DDP on
gloo for CPU, nccl for CUDA).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from casdap.checkpoint import checkpoint_head
from casdap.engine.seeding import capture_rng_state, restore_rng_state, seed_everything
from casdap.errors import CasdapError
from casdap.files import write_json


@dataclass
class TrainResult:
    """What a run produced (for callers that drive training from Python)."""

    model: nn.Module
    log: list[dict] = field(default_factory=list)
    eval_stats: dict | None = None
    max_accuracy: float = 0.0
    images_per_s: float = 0.0


def _criterion(args: argparse.Namespace, mixup_active: bool) -> nn.Module:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_active:
        return SoftTargetCrossEntropy()  # smoothing is folded into the mixed targets
    if args.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return nn.CrossEntropyLoss()


def _json_ready(args: argparse.Namespace) -> dict:
    plain = (int, float, str, bool, list, type(None))
    return {k: (v if isinstance(v, plain) else str(v)) for k, v in vars(args).items()}


def train(args: argparse.Namespace) -> TrainResult:
    """Train (or, with ``--eval True``, evaluate) as the CAS-ViT flags say (checked by the caller)."""
    from casdap import checkpoint as ckpt
    from casdap.checkpoint import load_checkpoint
    from casdap.data.datasets import build_dataset, build_train_transform
    from casdap.data.samplers import MultiScaleBatchSampler, MultiScaleDataset, scale_batch_pairs
    from casdap.engine import distributed as du
    from casdap.engine.optim_factory import WeightDecaySchedule, build_lr_scheduler, build_optimizer, warmup_steps
    from casdap.engine.train_eval import NonFiniteLossError, evaluate, train_one_epoch
    from casdap.models import create_model

    wall_start = time.time()
    du.set_console(sys.stderr if args.eval else None)
    try:
        device = du.init_distributed_mode(args)
        rank, world = du.get_rank(), du.get_world_size()
        args.device = str(device)
        from casdap.engine.threads import set_threads

        set_threads("casdap train", int(args.input_size), device.type)
        if args.usi_eval:
            args.crop_pct = 0.95
        state_key = "state_dict" if args.usi_eval else "model"

        seed = args.seed + rank
        seed_everything(seed)
        torch.backends.cudnn.benchmark = True

        output_dir = Path(args.output_dir) if args.output_dir else None
        if output_dir is not None and du.is_main_process():
            output_dir.mkdir(parents=True, exist_ok=True)
        if args.log_dir is None and output_dir is not None:
            args.log_dir = str(output_dir / "tensorboard")

        # ---- data ------------------------------------------------------------------------
        pin = args.pin_mem and device.type == "cuda"
        dataset_train = loader_train = train_sampler = None
        if not args.eval:
            raw = None if args.multi_scale_sampler else "auto"
            dataset_train, nb_classes = build_dataset(True, args, transform=raw)
        dataset_val = loader_val = None
        if args.eval or not args.disable_eval:
            dataset_val, nb_val = build_dataset(False, args)
            if dataset_train is None:
                nb_classes = nb_val
            elif nb_val != nb_classes:
                raise CasdapError(f"the evaluation set has {nb_val} classes but the training set {nb_classes}")
            if len(dataset_val) == 0:
                raise CasdapError("the evaluation set is empty")
        if args.data_set != "image_folder" and args.nb_classes not in (1000, nb_classes):
            raise CasdapError(f"--nb_classes {args.nb_classes} does not match the data ({nb_classes} classes)")
        args.nb_classes = nb_classes

        micro = args.batch_size * args.update_freq
        if dataset_train is not None:
            per_rank = -(-len(dataset_train) // world)
            if per_rank < micro:
                raise CasdapError(
                    f"batch size {args.batch_size} x update_freq {args.update_freq} x {world} process(es) needs at "
                    f"least {micro * world} training images per optimizer step, but the training set has "
                    f"{len(dataset_train)}: lower --batch_size or --update_freq"
                )
            if args.multi_scale_sampler:
                pairs = scale_batch_pairs(args.input_size, args.input_size, args.batch_size,
                                          args.min_crop_size_h, args.max_crop_size_h,
                                          args.min_crop_size_w, args.max_crop_size_w)
                train_sampler = MultiScaleBatchSampler(len(dataset_train), pairs, seed=args.seed,
                                                       num_replicas=world, rank=rank)
                dataset_train = MultiScaleDataset(dataset_train, functools.partial(build_train_transform, args))
                loader_train = DataLoader(dataset_train, batch_sampler=train_sampler, num_workers=args.num_workers,
                                          pin_memory=pin)
                steps_per_epoch = per_rank // micro
                du.log(f"multi-scale sampler: (h, w, batch) choices {pairs}")
            else:
                train_sampler = DistributedSampler(dataset_train, num_replicas=world, rank=rank, shuffle=True,
                                                   seed=args.seed)
                loader_train = DataLoader(dataset_train, sampler=train_sampler, batch_size=args.batch_size,
                                          num_workers=args.num_workers, pin_memory=pin, drop_last=True)
                steps_per_epoch = len(loader_train) // args.update_freq
        if dataset_val is not None:
            if args.dist_eval and world > 1:
                if len(dataset_val) % world:
                    du.log(f"note: {len(dataset_val)} evaluation images do not split evenly over {world} processes; "
                           "a few are counted twice (--dist_eval False avoids this)")
                sampler_val = DistributedSampler(dataset_val, num_replicas=world, rank=rank, shuffle=False)
            else:
                sampler_val = SequentialSampler(dataset_val)
            loader_val = DataLoader(dataset_val, sampler=sampler_val, batch_size=int(1.5 * args.batch_size),
                                    num_workers=args.num_workers, pin_memory=pin, drop_last=False)

        # ---- model -----------------------------------------------------------------------
        resume_path = args.resume
        if not resume_path and args.auto_resume and output_dir is not None:
            latest = ckpt.latest_checkpoint(output_dir)
            resume_path = str(latest) if latest else ""
        if args.eval and not resume_path:
            raise CasdapError("--eval True needs weights: pass --resume <checkpoint>")
        distillation, ckpt_classes = checkpoint_head(resume_path, state_key) if resume_path else (False, None)
        if args.eval and ckpt_classes is not None:
            # Evaluation takes the class count from the checkpoint (a Model Zoo file has 1000).
            labels = getattr(dataset_val, "targets", None)
            if labels is not None and max(labels) >= ckpt_classes:
                raise CasdapError(f"the evaluation set has labels up to {max(labels)} but '{resume_path}' "
                                  f"classifies {ckpt_classes} classes")
            nb_classes = args.nb_classes = ckpt_classes
        model = create_model(args.model, num_classes=nb_classes, drop_path_rate=args.drop_path,
                             classifier_dropout=args.classifier_dropout, distillation=distillation)
        if args.finetune and not args.eval:
            report = load_checkpoint(model, args.finetune, key=None, finetune=True)
            du.log(f"finetune: {report.summary()}")
        model.to(device)
        n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)

        if args.eval:
            report = load_checkpoint(model, resume_path, key=state_key, strict=True)
            du.log(f"resume: {report.summary()}")
            stats = evaluate(loader_val, model, device, use_amp=args.use_amp, print_result=False)
            if du.is_main_process():
                print(f"* Acc@1 {stats['acc1']:.3f} Acc@5 {stats['acc5']:.3f} loss {stats['loss']:.3f}", flush=True)
            return TrainResult(model=model, eval_stats=stats)

        model_ema = None
        if args.model_ema:
            from timm.utils import ModelEmaV3

            model_ema = ModelEmaV3(model, decay=args.model_ema_decay,
                                   device=torch.device("cpu") if args.model_ema_force_cpu else None)
        model_without_ddp = model
        if args.distributed:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[args.gpu] if device.type == "cuda" else None,
                find_unused_parameters=args.find_unused_params)

        optimizer = build_optimizer(args, model_without_ddp)
        lr_scheduler = build_lr_scheduler(args, optimizer, steps_per_epoch)
        wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
        wd_schedule = WeightDecaySchedule(args.weight_decay, wd_end, args.epochs * steps_per_epoch)
        scaler = torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu",
                                      enabled=args.use_amp and device.type == "cuda")

        from timm.data import Mixup
        from timm.utils import distribute_bn

        mixup_fn = None
        mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
        if mixup_active:
            if args.batch_size % 2 and args.mixup_mode != "elem":
                raise CasdapError(f"mixup/cutmix in '{args.mixup_mode}' mode needs an even --batch_size, got "
                                  f"{args.batch_size}")
            mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                             prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                             label_smoothing=args.smoothing, num_classes=nb_classes)
        criterion = _criterion(args, mixup_active)

        # ---- resume ----------------------------------------------------------------------
        max_accuracy, max_accuracy_ema = 0.0, 0.0
        rng_to_restore = None
        if resume_path:
            state = ckpt.read_training_state(resume_path)
            report = load_checkpoint(model_without_ddp, resume_path, key=state_key, strict=True)
            du.log(f"resume: {report.summary()}")
            if model_ema is not None and "model_ema" in state:
                load_checkpoint(model_ema.module, resume_path, key="model_ema", strict=True)
            if "optimizer" in state and "epoch" in state:
                optimizer.load_state_dict(state["optimizer"])
                # The lr and weight-decay schedules are functions of the flags and the global step, so they
                # are rebuilt from the flags (a resumed run may extend --epochs) and positioned by the epoch.
                if "scaler" in state:
                    scaler.load_state_dict(state["scaler"])
                args.start_epoch = int(state["epoch"]) + 1
                max_accuracy = float(state.get("max_accuracy", 0.0))
                max_accuracy_ema = float(state.get("max_accuracy_ema", 0.0))
                rng = state.get("rng_states")
                if rng and len(rng) == world:
                    rng_to_restore = rng[rank]
                else:
                    du.log(f"note: the checkpoint was written by {len(rng or [])} process(es), this run has {world}: "
                           "training continues, but not bit-identically to an uninterrupted run")
                du.log(f"resuming at epoch {args.start_epoch}")

        # ---- logging ---------------------------------------------------------------------
        log_writer = None
        if du.is_main_process():
            if output_dir is not None:
                write_json(output_dir / "args.json", _json_ready(args))
            if args.log_dir:
                from torch.utils.tensorboard import SummaryWriter

                log_writer = SummaryWriter(log_dir=args.log_dir)
        total_batch = micro * world
        du.log(f"model {args.model}: {n_parameters / 1e6:.2f}M trainable parameters, {nb_classes} classes; "
               f"device {device}, {world} process(es)")
        du.log(f"training images {len(dataset_train)}, batch {args.batch_size} x update_freq {args.update_freq} x "
               f"{world} = {total_batch}, {steps_per_epoch} steps per epoch, warmup "
               f"{warmup_steps(args, steps_per_epoch)} steps, lr {args.lr:g}")
        if warmup_steps(args, steps_per_epoch) >= args.epochs * steps_per_epoch:
            du.log(f"note: the warmup ({warmup_steps(args, steps_per_epoch)} steps) covers the whole run "
                   f"({args.epochs * steps_per_epoch} steps): the lr rises towards --lr and never decays")
        if args.start_epoch >= args.epochs:
            du.log(f"nothing to train: start epoch {args.start_epoch} >= --epochs {args.epochs}")

        # ---- train -----------------------------------------------------------------------
        result = TrainResult(model=model_without_ddp, max_accuracy=max_accuracy)
        train_images, train_time = 0.0, 0.0
        if rng_to_restore is not None:
            restore_rng_state(rng_to_restore)
        for epoch in range(args.start_epoch, args.epochs):
            epoch_start = time.perf_counter()
            train_sampler.set_epoch(epoch)
            try:
                train_stats = train_one_epoch(
                    model, criterion, loader_train, optimizer, device, epoch, scaler,
                    max_norm=args.clip_grad, model_ema=model_ema, mixup_fn=mixup_fn, log_writer=log_writer,
                    start_steps=epoch * steps_per_epoch, lr_scheduler=lr_scheduler, wd_schedule=wd_schedule,
                    steps_per_epoch=steps_per_epoch, update_freq=args.update_freq, use_amp=args.use_amp,
                    print_freq=args.print_verbose,
                )
            except NonFiniteLossError as e:
                last = ckpt.latest_checkpoint(output_dir) if output_dir is not None else None
                raise NonFiniteLossError(f"{e}. Last good checkpoint: {last or 'none written yet'}") from None
            if args.distributed:
                # Each rank updated BatchNorm running statistics from its own batches: average them, so
                # evaluation on every rank and the saved weights use the same statistics.
                distribute_bn(model_without_ddp, world, reduce=True)
            epoch_images, epoch_train_time = train_stats.pop("images"), train_stats.pop("time_s")
            train_images += epoch_images
            train_time += epoch_train_time
            stats = {f"train_{k}": v for k, v in train_stats.items()}
            improved = improved_ema = False
            if loader_val is not None:
                test_stats = evaluate(loader_val, model_without_ddp, device, use_amp=args.use_amp)
                improved = test_stats["acc1"] > max_accuracy
                max_accuracy = max(max_accuracy, test_stats["acc1"])
                du.log(f"Accuracy on {len(dataset_val)} test images: {test_stats['acc1']:.2f}% "
                       f"(max {max_accuracy:.2f}%)")
                stats.update({f"test_{k}": v for k, v in test_stats.items()})
                if model_ema is not None and args.model_ema_eval:
                    ema_stats = evaluate(loader_val, model_ema.module, device, use_amp=args.use_amp, header="EMA ")
                    improved_ema = ema_stats["acc1"] > max_accuracy_ema
                    max_accuracy_ema = max(max_accuracy_ema, ema_stats["acc1"])
                    stats.update({f"test_{k}_ema": v for k, v in ema_stats.items()})
            if output_dir is not None and args.save_ckpt:
                periodic = (epoch + 1) % args.save_ckpt_freq == 0 or epoch + 1 == args.epochs
                if periodic or improved or improved_ema:
                    rng_states = du.all_gather_object(capture_rng_state())
                    if du.is_main_process():
                        state = ckpt.training_state(
                            model=model_without_ddp, optimizer=optimizer, scaler=scaler,
                            model_ema=model_ema, epoch=epoch, args=_json_ready(args), max_accuracy=max_accuracy,
                            max_accuracy_ema=max_accuracy_ema, rng_states=rng_states)
                        if periodic:
                            ckpt.save_checkpoint(state, output_dir / f"checkpoint-{epoch}.pth")
                            ckpt.prune_checkpoints(output_dir, args.save_ckpt_num)
                        if improved:
                            ckpt.save_checkpoint(state, output_dir / "checkpoint-best.pth")
                        if improved_ema:
                            ckpt.save_checkpoint(state, output_dir / "checkpoint-best-ema.pth")
            stats.update({
                "epoch": epoch,
                "n_parameters": n_parameters,
                "epoch_time_s": time.perf_counter() - epoch_start,
                "train_images_per_s": epoch_images / epoch_train_time if epoch_train_time > 0 else 0.0,
            })
            result.log.append(stats)
            if du.is_main_process():
                if log_writer is not None:
                    for k in ("test_acc1", "test_acc5", "test_loss", "test_acc1_ema"):
                        if k in stats:
                            log_writer.add_scalar(f"perf/{k}", stats[k], epoch)
                    log_writer.add_scalar("perf/train_images_per_s", stats["train_images_per_s"], epoch)
                    log_writer.flush()
                if output_dir is not None:
                    with open(output_dir / "log.txt", "a", encoding="utf-8") as f:
                        f.write(json.dumps(stats) + "\n")
        if log_writer is not None:
            log_writer.close()

        wall = time.time() - wall_start
        result.max_accuracy = max_accuracy
        result.images_per_s = train_images / train_time if train_time > 0 else 0.0
        best = f"; max accuracy {max_accuracy:.2f}%" if loader_val is not None else ""
        best += f", EMA {max_accuracy_ema:.2f}%" if model_ema is not None and args.model_ema_eval else ""
        du.log(f"Training time {datetime.timedelta(seconds=int(wall))} (wall {wall:.1f} s); "
               f"{int(train_images)} training images at {result.images_per_s:.1f} images/s{best}")
        return result
    finally:
        du.set_console(None)
        du.cleanup()
