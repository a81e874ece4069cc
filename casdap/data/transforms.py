"""The image transforms of every training path (supervised ``casdap train`` and continual ``casdap cl``).

Training: timm's ``create_transform`` (random-resized crop, flip, colour jitter, RandAugment /
AutoAugment, random erasing), optionally DeiT III's three augmentations, and at 32 px and below
optionally a padded random crop (CIFAR's) instead of the random-resized one. Evaluation: timm's
resize + centre crop with ``crop_pct``, optionally squashing to a square first.
"""

from __future__ import annotations

from PIL import Image, ImageOps
from timm.data import auto_augment, create_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms

Size = int | tuple[int, int]


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, with 0 bits giving the black image older Pillow produced (Pillow >= 11
    rejects 0 bits, which RandAugment's increasing posterize reaches at high magnitude)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform) -> None:
    for t in getattr(transform, "transforms", []):
        ops = getattr(t, "ops", None)
        if ops is None and hasattr(t, "policy"):  # AutoAugment: a list of sub-policies
            ops = [op for sub in t.policy for op in sub]
        for op in ops or []:
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize


def train_transform(
    size: Size,
    *,
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
    color_jitter: float | None = None,
    auto_augment: str | None = None,
    interpolation: str = "bicubic",
    re_prob: float = 0.0,
    re_mode: str = "pixel",
    re_count: int = 1,
    three_aug: bool = False,
    padded_crop_when_small: bool = False,
) -> transforms.Compose:
    """Training augmentation at ``size`` (an int, or ``(h, w)`` for the multi-scale sampler).

    ``color_jitter`` is passed to timm as given (None: no jitter). ``padded_crop_when_small``: at
    32 px and below, a random crop with 4 pixels of padding replaces the random-resized crop.
    """
    transform = create_transform(
        input_size=size, is_training=True, color_jitter=color_jitter, auto_augment=auto_augment,
        interpolation=interpolation, re_prob=re_prob, re_mode=re_mode, re_count=re_count, re_num_splits=0,
        mean=mean, std=std,
    )
    _patch_posterize(transform)
    steps = list(transform.transforms)
    if three_aug:
        # DeiT III's three augmentations (one of grey, solarise, blur) in place of RandAugment.
        three = transforms.RandomChoice([
            transforms.Grayscale(num_output_channels=3),
            transforms.RandomSolarize(threshold=192.0),
            transforms.GaussianBlur(kernel_size=(5, 9)),
        ])
        steps = steps[:2] + [three] + steps[2:]
    if padded_crop_when_small and max(size if isinstance(size, tuple) else (size,)) <= 32:
        steps[0] = transforms.RandomCrop(size, padding=4)
    return transforms.Compose(steps)


def eval_transform(
    size: int,
    *,
    crop_pct: float,
    crop_mode: str = "center",
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
) -> transforms.Compose:
    """Resize to ``size / crop_pct`` and crop ``size`` from the centre (bicubic). ``crop_mode``
    "center" resizes the shorter side; "squash" resizes to a square first (CAS-ViT at 384 px)."""
    return create_transform(size, is_training=False, interpolation="bicubic", crop_pct=crop_pct, crop_mode=crop_mode,
                            mean=mean, std=std)
