"""Data sets and transforms for supervised CAS-ViT training (``casdap train``).

``--data_set`` picks the layout:

- ``CIFAR`` / ``CIFAR100`` and ``CIFAR10``: torchvision's ``cifar-100-python`` /
  ``cifar-10-batches-py`` folders under ``--data_path`` (default ``./data``).
- ``IMNET``: ``<data_path>/train/<class>/*`` and ``<data_path>/val/`` holding either the same
  class folders or flat image files listed in a file of ``relative/path label`` lines
  (``<data_path>/val.txt``, ``<data_path>/val_list.txt`` or ``./data/imagenet1k/val.txt``).
- ``image_folder``: any ``<root>/<class>/*`` folder; evaluation reads ``--eval_data_path``.

Transforms (``casdap.data.transforms``, shared with ``casdap cl``) follow CAS-ViT training: timm's
``create_transform`` (RandAugment, colour jitter, random erasing) for training, resize + centre
crop with ``crop_pct`` for evaluation; at 32 px the random-resized crop becomes a padded random
crop, as for CIFAR.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from timm.data.constants import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
)
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from casdap.data.cifar import CIFARLocal
from casdap.data.transforms import eval_transform, train_transform
from casdap.errors import CasdapError

DATA_SETS = ("CIFAR", "CIFAR100", "CIFAR10", "IMNET", "image_folder")
CIFAR_VARIANTS = {"CIFAR": "cifar100", "CIFAR100": "cifar100", "CIFAR10": "cifar10"}
VAL_LIST_NAMES = ("val.txt", "val_list.txt")
IMG_EXTENSIONS = datasets.folder.IMG_EXTENSIONS


def data_root(args: argparse.Namespace) -> Path:
    return Path(args.data_path) if args.data_path else Path("data")


def _mean_std(args: argparse.Namespace) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if args.imagenet_default_mean_and_std:
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD


def build_train_transform(args: argparse.Namespace, size: int | tuple[int, int]) -> transforms.Compose:
    """Training augmentation at ``size`` (an int, or ``(h, w)`` for the multi-scale sampler)."""
    mean, std = _mean_std(args)
    return train_transform(
        size, mean=mean, std=std, color_jitter=args.color_jitter if args.color_jitter > 0 else None,
        auto_augment=args.aa or None, interpolation=args.train_interpolation, re_prob=args.reprob,
        re_mode=args.remode, re_count=args.recount, three_aug=args.three_aug, padded_crop_when_small=True,
    )


def build_eval_transform(args: argparse.Namespace) -> transforms.Compose:
    """Resize + centre crop (``crop_pct``, default 224/256); squash to a square at 384 px and above;
    no cropping at 32 px and below."""
    mean, std = _mean_std(args)
    size = args.input_size
    crop_pct = args.crop_pct if args.crop_pct is not None else 224 / 256
    if size >= 384:
        return eval_transform(size, crop_pct=1.0, crop_mode="squash", mean=mean, std=std)
    return eval_transform(size, crop_pct=1.0 if size <= 32 else crop_pct, mean=mean, std=std)


def build_transform(is_train: bool, args: argparse.Namespace) -> transforms.Compose:
    return build_train_transform(args, args.input_size) if is_train else build_eval_transform(args)


class ListFileDataset(Dataset):
    """Flat image files named in a list of ``relative/path label`` lines (the ImageNet val layout)."""

    def __init__(self, root: Path, list_file: Path, transform=None) -> None:
        self.root, self.transform = root, transform
        self.samples: list[tuple[str, int]] = []
        for n, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.strip().rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
                raise CasdapError(f"'{list_file}' line {n} is malformed: expected 'relative/path label', got '{line}'")
            self.samples.append((str(root / parts[0]), int(parts[1])))
        if not self.samples:
            raise CasdapError(f"'{list_file}' lists no images")
        missing = [p for p, _ in self.samples if not Path(p).is_file()]
        if missing:
            raise CasdapError(f"'{list_file}' names {len(missing)} files that do not exist, e.g. '{missing[0]}'")
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        img = _load_rgb(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def _load_rgb(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except Exception as e:
        raise CasdapError(f"cannot read image '{path}' ({type(e).__name__}: {e})") from None


def _image_folder(root: Path, transform, what: str) -> datasets.ImageFolder:
    if not root.is_dir():
        raise CasdapError(f"{what} folder '{root}' does not exist")
    try:
        ds = datasets.ImageFolder(str(root), transform=transform, loader=_load_rgb)
    except (FileNotFoundError, RuntimeError) as e:
        raise CasdapError(f"{what} folder '{root}' is not a class-folder dataset: {e}") from None
    return ds


def _find_val_list(root: Path) -> Path | None:
    for candidate in [root / n for n in VAL_LIST_NAMES] + [Path("data") / "imagenet1k" / "val.txt"]:
        if candidate.is_file():
            return candidate
    return None


def _imagenet_layout(root: Path) -> str:
    return (f"expected {root}/train/<class>/<image> and {root}/val/ with either the same class folders or "
            f"flat images listed in {root}/val.txt ('relative/path label' per line)")


def _imagenet_val(root: Path, transform) -> Dataset:
    val = root / "val"
    if not val.is_dir():
        raise CasdapError(f"ImageNet validation folder '{val}' not found: {_imagenet_layout(root)}")
    if any(p.is_dir() for p in val.iterdir()):
        return _image_folder(val, transform, "ImageNet validation")
    list_file = _find_val_list(root)
    if list_file is None:
        raise CasdapError(f"'{val}' holds flat files but no list file was found: {_imagenet_layout(root)}")
    return ListFileDataset(val, list_file, transform)


def _imagenet_classes(root: Path, val: Dataset | None) -> int:
    train = root / "train"
    if train.is_dir():
        return sum(1 for p in train.iterdir() if p.is_dir())
    if isinstance(val, datasets.ImageFolder):
        return len(val.classes)
    if isinstance(val, ListFileDataset):
        return max(val.targets) + 1
    raise CasdapError(f"ImageNet training folder '{train}' not found: {_imagenet_layout(root)}")


def build_dataset(is_train: bool, args: argparse.Namespace, transform: Callable | None | str = "auto"
                  ) -> tuple[Dataset, int]:
    """The training or evaluation set named by ``--data_set`` and its number of classes.

    ``transform="auto"`` builds the CAS-ViT transform; the multi-scale sampler passes ``None``
    and transforms each batch at its own resolution.
    """
    if transform == "auto":
        transform = build_transform(is_train, args)
    root = data_root(args)
    if args.data_set in CIFAR_VARIANTS:
        variant = CIFAR_VARIANTS[args.data_set]
        ds = CIFARLocal(root, train=is_train, variant=variant, transform=transform)
        return ds, len(ds.classes)
    if args.data_set == "IMNET":
        if is_train:
            ds = _image_folder(root / "train", transform, "ImageNet training")
            return ds, len(ds.classes)
        ds = _imagenet_val(root, transform)
        return ds, _imagenet_classes(root, ds)
    if args.data_set == "image_folder":
        folder = root if is_train else Path(args.eval_data_path or root)
        ds = _image_folder(folder, transform, "image_folder " + ("training" if is_train else "evaluation"))
        if len(ds.classes) != args.nb_classes:
            raise CasdapError(
                f"'{folder}' has {len(ds.classes)} class folders but --nb_classes is {args.nb_classes}; "
                f"pass --nb_classes {len(ds.classes)}"
            )
        return ds, args.nb_classes
    raise CasdapError(f"unknown --data_set '{args.data_set}' (use one of {', '.join(DATA_SETS)})")
