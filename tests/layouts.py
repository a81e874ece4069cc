"""Test data written in the real on-disk layouts (CIFAR pickles), so the loaders are tested on files
like the ones users have."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from casdap.data.cifar import LAYOUTS


def write_cifar(root: str | Path, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                variant: str = "cifar100", train: bool = True) -> Path:
    """Write ``[N, 32, 32, 3]`` uint8 images in the torchvision layout (for fixtures and exports).

    CIFAR-10 training data goes in five batches as the original does.
    """
    folder, train_files, test_files, meta_file, label_key, names_key = LAYOUTS[variant]
    base = Path(root) / folder
    base.mkdir(parents=True, exist_ok=True)
    flat = np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2)).reshape(len(images), -1)
    labels = np.asarray(labels, dtype=np.int64)
    files = train_files if train else test_files
    for part, name in zip(np.array_split(np.arange(len(labels)), len(files)), files):
        batch = {"data": flat[part], label_key: labels[part].tolist(), "filenames": [f"{i}.png" for i in part]}
        if variant == "cifar100":
            batch["coarse_labels"] = [0] * len(part)
        with open(base / name, "wb") as f:
            pickle.dump(batch, f)
    with open(base / meta_file, "wb") as f:
        pickle.dump({names_key: list(class_names)}, f)
    return base
