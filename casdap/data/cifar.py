"""CIFAR-10/100 in torchvision's on-disk layout, read without MD5 checks and without running code.

torchvision's CIFAR classes reject any file whose MD5 is not the original's, and unpickle with
the full pickle machinery. Here a well-formed file in the same layout loads (a subset, a
re-export), a truncated or malformed one gets a clear error, and unpickling only admits the
plain containers and numpy arrays that the format uses.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from casdap.errors import CasdapError

# variant -> (folder, train files, test files, meta file, label key, class-name key)
LAYOUTS = {
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        "labels",
        "label_names",
    ),
}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR files hold only arrays and lists")


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _DataOnlyUnpickler(io.BufferedReader(f), encoding="latin1").load()
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CasdapError(f"'{path}' is truncated or not a CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CasdapError(f"'{path}' is not a CIFAR batch (holds a {type(obj).__name__}, expected a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def expected_layout(variant: str) -> str:
    folder, train, test, meta, *_ = LAYOUTS[variant]
    files = ", ".join([*train, *test, meta])
    return f"<data_path>/{folder}/ with files {files} (the torchvision / cs.toronto.edu layout)"


def find_cifar_root(data_path: str | Path | None, variant: str) -> Path:
    """The folder that contains ``cifar-100-python`` (or ``cifar-10-batches-py``).

    Accepts the parent folder or the layout folder itself; ``None`` means ``./data``.
    """
    folder = LAYOUTS[variant][0]
    base = Path(data_path) if data_path else Path("data")
    for candidate in (base, base.parent if base.name == folder else None):
        if candidate is not None and (candidate / folder).is_dir():
            return candidate
    raise CasdapError(
        f"{variant.upper()} not found under '{base}'. Expected {expected_layout(variant)}. "
        "Download it once on a machine with network access (torchvision.datasets."
        f"{'CIFAR100' if variant == 'cifar100' else 'CIFAR10'}(root, download=True)) and pass --data_path."
    )


def read_cifar(
    root: str | Path, variant: str = "cifar100", train: bool = True
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images ``[N, 32, 32, 3]`` uint8, labels ``[N]`` int64 and class names from ``root``."""
    if variant not in LAYOUTS:
        raise CasdapError(f"unknown CIFAR variant '{variant}' (use one of {', '.join(LAYOUTS)})")
    folder, train_files, test_files, meta_file, label_key, names_key = LAYOUTS[variant]
    base = Path(root) / folder
    images, labels = [], []
    for name in train_files if train else test_files:
        path = base / name
        if not path.is_file():
            raise CasdapError(f"missing CIFAR file '{path}'. Expected {expected_layout(variant)}")
        batch = _load_pickle(path)
        if "data" not in batch or label_key not in batch:
            raise CasdapError(f"'{path}' is malformed: needs keys 'data' and '{label_key}', has {sorted(batch)}")
        data = np.asarray(batch["data"])
        lab = np.asarray(batch[label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise CasdapError(
                f"'{path}' is malformed: 'data' must be uint8 [N, 3072] with N labels, "
                f"got {data.dtype} {list(data.shape)} with {len(lab)} labels"
            )
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    meta_path = base / meta_file
    if not meta_path.is_file():
        raise CasdapError(f"missing CIFAR file '{meta_path}'. Expected {expected_layout(variant)}")
    names = [str(n) for n in _load_pickle(meta_path).get(names_key, [])]
    y = np.concatenate(labels)
    if not names or y.min() < 0 or y.max() >= len(names):
        raise CasdapError(f"'{meta_path}' is malformed: '{names_key}' must name every label in 0..{y.max()}")
    return np.ascontiguousarray(np.concatenate(images)), y, names


class CIFARLocal(Dataset):
    """Map-style CIFAR dataset over :func:`read_cifar`, torchvision-compatible.

    ``targets`` and ``classes`` are exposed like torchvision's, so Avalanche builds class-incremental
    benchmarks from it directly.
    """

    def __init__(self, root: str | Path | None, train: bool = True, variant: str = "cifar100", transform=None,
                 target_transform=None) -> None:
        self.root = find_cifar_root(root, variant)
        self.data, targets, self.classes = read_cifar(self.root, variant, train)
        self.targets = targets.tolist()
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index])
        target = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target
