"""Tiny data sets in the real on-disk layouts, for the training tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from layouts import write_cifar
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def readme_seed_lines() -> list[str]:
    """The README's copy of the seed's command lines (its ``<!-- seed-lines -->`` block)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- seed-lines -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README.md lost its <!-- seed-lines --> block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def class_images(n: int, n_classes: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: each class has its own colour and stripe direction, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    colours = rng.integers(40, 216, size=(n_classes, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        stripes = ((xx if c % 2 else yy) // (2 + c % 4)) % 2
        img = colours[c][None, None, :] * (0.6 + 0.4 * stripes[..., None]) + rng.normal(0, 12, (size, size, 3))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels


def write_tiny_cifar(data_dir: Path, n_train: int, n_test: int, n_classes: int = 100,
                     variant: str = "cifar100") -> Path:
    names = [f"class_{i}" for i in range(n_classes)]
    x, y = class_images(n_train, n_classes, seed=1)
    write_cifar(data_dir, x, y, names, variant=variant, train=True)
    x, y = class_images(n_test, n_classes, seed=2)
    write_cifar(data_dir, x, y, names, variant=variant, train=False)
    return data_dir


def write_image_folders(root: Path, n_per_class: int, n_classes: int = 3, flat_val: bool = True,
                        size: int = 40) -> Path:
    """ImageNet layout: train/<class>/*.png; val/ flat files with val.txt, or val/<class>/*.png."""
    x, y = class_images(n_per_class * n_classes, n_classes, size=size, seed=3)
    for i, (img, c) in enumerate(zip(x, y)):
        d = root / "train" / f"n{c:08d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"img_{i}.png")
    xv, yv = class_images(2 * n_classes, n_classes, size=size, seed=4)
    lines = []
    for i, (img, c) in enumerate(zip(xv, yv)):
        if flat_val:
            (root / "val").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "val" / f"val_{i:04d}.png")
            lines.append(f"val_{i:04d}.png {c}")
        else:
            d = root / "val" / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"val_{i}.png")
    if flat_val:
        (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def run_main(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=timeout)
