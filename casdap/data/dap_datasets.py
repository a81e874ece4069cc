"""DAP's nine data sets as its reference code reads them from tensorflow-datasets folders.

Facts of naver-ai/dap-cl (``src/data/tf_load.py``, ``tf_dataset.py``, ``configs/dap/``):

- ``chestx``, ``eurosat/rgb``, ``isic`` and ``resisc45`` train on the first 80% of ``train`` in file
  order (tfds's ``train[:N]``, ``N = len * 80 // 100``) and test on the rest; ``imagenet_r`` makes
  the same cut of ``test``; every other name reads ``train`` and ``test`` as they are.
- ImageNet-R's labels are ImageNet-1k ids, mapped to 0..199 by a fixed table
  (``casdap.data.imagenet_r_labels``).
- Tasks take labels in natural order; labels past the last task are dropped (Pets keeps 35 of 37
  classes, CropDiseases 35 of 38, ChestX and ISIC 6 each): ``DATA.NUMBER_CLASSES`` says how many.

This module is torch-free at import, so the config checks can read the names.
"""

from __future__ import annotations

from pathlib import Path

from casdap.errors import CasdapError

__all__ = ["DAP_DATASETS", "CUT_PERCENT", "read_tfds", "imagenet_r_folder_labels", "keep_labels"]

CUT_PERCENT = 80
# name -> the split DAP cuts 80/20 in file order, or None: train and test as they are
DAP_DATASETS: dict[str, str | None] = {
    "cifar100": None,
    "imagenet_r": "test",
    "oxford_iiit_pet": None,
    "eurosat/rgb": "train",
    "resisc45": "train",
    "cropdisease": None,
    "isic": "train",
    "chestx": "train",
    "domainnet/real": None,
}


def _map_imagenet_r(labels, folder: Path):
    """ImageNet ids -> DAP's ImageNet-R labels; an id outside ImageNet-R's 200 is an error."""
    import numpy as np

    from casdap.data.imagenet_r_labels import IMAGENET_R_IDS

    table = np.full(1000, -1, dtype=np.int64)
    table[list(IMAGENET_R_IDS)] = np.arange(len(IMAGENET_R_IDS))
    bad = labels[(labels < 0) | (labels >= 1000)]
    mapped = table[np.clip(labels, 0, 999)]
    if len(bad) or (mapped < 0).any():
        first = int(bad[0]) if len(bad) else int(labels[mapped < 0][0])
        raise CasdapError(f"imagenet_r at '{folder}' has label {first}, which is not one of ImageNet-R's 200 "
                          "ImageNet ids: DATA.NAME imagenet_r needs tensorflow-datasets' imagenet_r")
    return mapped


def read_tfds(name: str, data_dir: str | Path):
    """``(train source, train labels), (test source, test labels), class names`` of one of DAP's names
    from its TFDS folder, split by DAP's rule; a source's ``[i]`` is a PIL image."""
    import numpy as np
    from torch.utils.data import Subset

    from casdap.data.imagenet_r_labels import IMAGENET_R_IDS
    from casdap.data.tfds import TFDSSplit, find_version, read_info

    folder = find_version(data_dir, name)
    info = read_info(folder)
    cut = DAP_DATASETS[name]
    if cut is None:
        parts = []
        for split in ("train", "test"):
            info.split_files(split)  # a missing split is named before the other one is read
        for split in ("train", "test"):
            records = TFDSSplit(info, split)
            parts.append((records, np.arange(len(records))))
    else:
        records = TFDSSplit(info, cut)
        n = len(records) * CUT_PERCENT // 100
        parts = [(records, np.arange(n)), (records, np.arange(n, len(records)))]
    out = []
    for records, idx in parts:
        labels = records.labels[idx]
        if name == "imagenet_r":
            labels = _map_imagenet_r(labels, folder)
        out.append((Subset(records, idx.tolist()), labels.tolist()))
    if name == "imagenet_r":
        full = info.class_names if info.class_names and len(info.class_names) == 1000 else None
        names = [full[i] if full else str(i) for i in IMAGENET_R_IDS]
    else:
        seen = max(max(out[0][1], default=-1), max(out[1][1], default=-1)) + 1
        count = info.num_classes or seen
        if seen > count or min(min(out[0][1], default=0), min(out[1][1], default=0)) < 0:
            raise CasdapError(f"'{folder}' has labels outside 0..{count - 1}, the {count} classes its features.json "
                              "declares: prepare the data set again")
        names = list(info.class_names or [])[:count] + [str(i) for i in range(len(info.class_names or []), count)]
    return out[0], out[1], names


def imagenet_r_folder_labels(classes: list[str]) -> list[int] | None:
    """For ImageNet-R's 200 WordNet-id class folders (``n01443537``, ...): DAP's label of each sorted
    folder. ImageNet numbers its classes in sorted WordNet-id order, so the k-th folder is the k-th
    smallest of ImageNet-R's ImageNet ids. ``None`` for other folder names."""
    import re

    from casdap.data.imagenet_r_labels import imagenet_r_label_of

    if len(classes) != 200 or not all(re.fullmatch(r"n\d{8}", c) for c in classes):
        return None
    label_of = imagenet_r_label_of()
    return [label_of[imagenet_id] for imagenet_id in sorted(label_of)]


def keep_labels(name: str, data_classes: int, number_classes: int) -> int:
    """How many classes a run keeps: ``DATA.NUMBER_CLASSES`` when set (DAP drops the labels past its
    last task), all of them when it is -1; more than the data has is an error."""
    if number_classes <= 0:
        return data_classes
    if number_classes > data_classes:
        raise CasdapError(f"DATA.NUMBER_CLASSES is {number_classes}, but '{name}' has {data_classes} classes: "
                          f"set DATA.NUMBER_CLASSES {data_classes} or less (or -1 for all)")
    return number_classes
