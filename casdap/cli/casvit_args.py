"""The flags of the official CAS-ViT classification ``main.py``: one definition for the supervised
path (``casdap train``), which runs them all, and the continual path (``casdap cl``), which maps
those that mean something for a frozen-backbone run onto config keys.

Kept free of heavy imports so ``--help`` and flag errors answer at once.
"""

from __future__ import annotations

import argparse

from casdap.cli.argtypes import str2bool
from casdap.errors import CasdapError

# Flags of the official script that this implementation accepts only at their default value,
# with the reason shown to the user.
FIXED_FLAGS = {
    "layer_scale_init_value": (1e-6, "CAS-ViT blocks have no layer scale"),
    "enable_wandb": (False, "Weights & Biases logging is not included; TensorBoard events go to --log_dir"),
    "wandb_ckpt": (False, "Weights & Biases logging is not included"),
    "project": ("edgenext", "Weights & Biases logging is not included"),
    "resplit": (False, "random-erasing splits need augmentation splits (AugMix), which the CAS-ViT recipe "
                       "does not use"),
}


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes (unknown, ambiguous or malformed flags) become one CasdapError line."""

    def error(self, message: str):  # type: ignore[override]
        raise CasdapError(f"{message} (see '{self.prog} --help')")


def add_casvit_flags(p: argparse.ArgumentParser, typed_only: bool = False) -> argparse.ArgumentParser:
    """Every flag of the official CAS-ViT ``main.py``, with its default (``typed_only``: no defaults,
    so the namespace holds just what the user typed). Booleans take True/False or stand alone."""

    def add(group, *names: str, **kw):
        if kw.get("type") is str2bool:
            kw.update(nargs="?", const=True, metavar="BOOL")
        if typed_only:
            kw["default"] = argparse.SUPPRESS
        return group.add_argument(*names, **kw)

    add(p, "--batch_size", default=256, type=int, help="per-process batch size")
    add(p, "--epochs", default=300, type=int)
    add(p, "--update_freq", default=2, type=int, help="gradient accumulation steps")

    g = p.add_argument_group("model")
    add(g, "--model", default="rcvit_xs", type=str, metavar="MODEL", help="rcvit_xs, rcvit_s, rcvit_m, rcvit_t")
    add(g, "--drop_path", type=float, default=0.1, metavar="PCT", help="stochastic depth rate")
    add(g, "--input_size", default=224, type=int, help="image input size")
    add(g, "--layer_scale_init_value", default=1e-6, type=float, help="accepted for compatibility; "
                   "CAS-ViT has no layer scale, so only the default is allowed")
    add(g, "--classifier_dropout", default=0.0, type=float)

    g = p.add_argument_group("EMA")
    add(g, "--model_ema", type=str2bool, default=False)
    add(g, "--model_ema_decay", type=float, default=0.9995)
    add(g, "--model_ema_force_cpu", type=str2bool, default=False)
    add(g, "--model_ema_eval", type=str2bool, default=False, help="also evaluate the EMA weights each epoch")

    g = p.add_argument_group("optimization")
    add(g, "--opt", default="adamw", type=str, metavar="OPTIMIZER", help="any timm optimizer name")
    add(g, "--opt_eps", default=1e-8, type=float, metavar="EPSILON")
    add(g, "--opt_betas", default=None, type=float, nargs="+", metavar="BETA")
    add(g, "--clip_grad", type=float, default=None, metavar="NORM", help="clip gradient norm")
    add(g, "--momentum", type=float, default=0.9, metavar="M", help="SGD momentum")
    add(g, "--weight_decay", type=float, default=0.05)
    add(g, "--weight_decay_end", type=float, default=None, help="final weight decay of a cosine "
                   "schedule (default: constant --weight_decay)")
    add(g, "--lr", type=float, default=6e-3, metavar="LR")
    add(g, "--layer_decay", type=float, default=1.0, help="layer-wise lr decay (1.0: off)")
    add(g, "--min_lr", type=float, default=1e-6, metavar="LR")
    add(g, "--warmup_epochs", type=int, default=20, metavar="N")
    add(g, "--warmup_steps", type=int, default=-1, metavar="N", help="warmup in optimizer steps; "
                   "overrides --warmup_epochs when > 0")
    add(g, "--warmup_start_lr", type=float, default=0, metavar="LR")

    g = p.add_argument_group("augmentation")
    add(g, "--color_jitter", type=float, default=0.4, metavar="PCT")
    add(g, "--aa", type=str, default="rand-m9-mstd0.5-inc1", metavar="NAME", help="timm auto-augment "
                   "policy ('' for none)")
    add(g, "--smoothing", type=float, default=0.1, help="label smoothing")
    add(g, "--train_interpolation", type=str, default="bicubic", help="random, bilinear or bicubic")
    add(g, "--crop_pct", type=float, default=None, help="eval centre-crop fraction (default 224/256)")
    add(g, "--reprob", type=float, default=0.0, metavar="PCT", help="random erase probability")
    add(g, "--remode", type=str, default="pixel", help="random erase mode")
    add(g, "--recount", type=int, default=1, help="random erase count")
    add(g, "--resplit", type=str2bool, default=False, help="accepted for compatibility (default only)")
    add(g, "--three_aug", action="store_true", help="DeiT III three augmentations")
    add(g, "--mixup", type=float, default=0.0, help="mixup alpha, enabled if > 0")
    add(g, "--cutmix", type=float, default=0.0, help="cutmix alpha, enabled if > 0")
    add(g, "--cutmix_minmax", type=float, nargs="+", default=None)
    add(g, "--mixup_prob", type=float, default=0.0, help="probability of applying mixup or cutmix")
    add(g, "--mixup_switch_prob", type=float, default=0.5)
    add(g, "--mixup_mode", type=str, default="batch", choices=["batch", "pair", "elem"])

    g = p.add_argument_group("data")
    add(g, "--data_path", default=None, type=str, help="data root (default: ./data)")
    add(g, "--eval_data_path", default=None, type=str, help="evaluation folder for image_folder")
    add(g, "--nb_classes", default=1000, type=int, help="class count for image_folder")
    add(g, "--imagenet_default_mean_and_std", type=str2bool, default=True)
    add(g, "--data_set", default="IMNET", choices=["IMNET", "image_folder", "CIFAR", "CIFAR100", "CIFAR10"],
                   type=str, help="CIFAR is CIFAR-100")
    add(g, "--num_workers", default=10, type=int)
    add(g, "--pin_mem", type=str2bool, default=True)
    add(g, "--multi_scale_sampler", action="store_true", help="batches at several resolutions")
    add(g, "--min_crop_size_w", default=160, type=int)
    add(g, "--max_crop_size_w", default=320, type=int)
    add(g, "--min_crop_size_h", default=160, type=int)
    add(g, "--max_crop_size_h", default=320, type=int)

    g = p.add_argument_group("run")
    add(g, "--output_dir", default="", help="where to save checkpoints and logs; empty: no saving")
    add(g, "--log_dir", default=None, help="TensorBoard folder (default: <output_dir>/tensorboard)")
    add(g, "--device", default="cuda", help="cuda or cpu (falls back to cpu without a GPU)")
    add(g, "--seed", default=43, type=int)
    add(g, "--resume", default="", help="resume from checkpoint")
    add(g, "--finetune", default="", help="initialise from weights (heads of another class count dropped)")
    add(g, "--auto_resume", type=str2bool, default=True, help="resume from the latest checkpoint in "
                   "--output_dir")
    add(g, "--save_ckpt", type=str2bool, default=True)
    add(g, "--save_ckpt_freq", default=1, type=int)
    add(g, "--save_ckpt_num", default=3, type=int, help="numbered checkpoints kept (plus the best)")
    add(g, "--start_epoch", default=0, type=int, metavar="N")
    add(g, "--eval", type=str2bool, default=False, help="evaluation only")
    add(g, "--dist_eval", type=str2bool, default=True, help="split evaluation across processes")
    add(g, "--disable_eval", type=str2bool, default=False, help="no evaluation during training")
    add(g, "--use_amp", type=str2bool, default=True, help="bf16 autocast on CPU, fp16 + grad scaler on CUDA")
    add(g, "--usi_eval", type=str2bool, default=False, help="evaluate a USI checkpoint ('state_dict' "
                   "entry, crop_pct 0.95)")
    add(g, "--print_verbose", default=100, type=int, help="print progress every N steps (0: never)")
    add(g, "--project", default="edgenext", type=str, help="accepted for compatibility (default only)")
    add(g, "--enable_wandb", type=str2bool, default=False, help="accepted for compatibility (False only)")
    add(g, "--wandb_ckpt", type=str2bool, default=False, help="accepted for compatibility (False only)")

    g = p.add_argument_group("distributed (set by torch.distributed.run)")
    add(g, "--world_size", default=1, type=int, help="number of processes (from the launcher)")
    add(g, "--local_rank", "--local-rank", dest="local_rank", default=-1, type=int)
    add(g, "--dist_on_itp", type=str2bool, default=False)
    add(g, "--dist_url", default="env://", help="process-group init method")
    add(g, "--find_unused_params", action="store_true")
    return p


