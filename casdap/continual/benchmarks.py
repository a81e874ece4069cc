"""Class-incremental Avalanche benchmarks built from local data.

Every data set becomes a pair of map-style datasets with a ``targets`` list (images already
transformed to normalised tensors), which Avalanche's ``class_incremental_benchmark`` splits into
experiences with a fixed class order: natural label order by default (the DAP protocol), or a
seeded permutation when ``CONTINUAL.SHUFFLE_CLASSES`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset
from yacs.config import CfgNode

from casdap.config.validate import check_data_shares
from casdap.errors import CasdapError

__all__ = ["ContinualBenchmark", "build_benchmark", "clean_training_views", "task_split", "DATASETS"]

DATASETS = ("digits", "embedded_shift", "embedded_domains", "cifar100", "cifar10", "imagenet_r", "folder",
            "oxford_iiit_pet", "eurosat/rgb", "resisc45", "cropdisease", "isic", "chestx", "domainnet/real")
# The embedded digits use the input scale of the project's digits backbones (``casdap pretrain``,
# ``casdap demo``): (x - 0.5) / 0.25 on [0, 1] images. Photos use ImageNet statistics (Model Zoo).
DIGITS_MEAN, DIGITS_STD = 0.5, 0.25


@dataclass
class ContinualBenchmark:
    """An Avalanche class-incremental scenario and the facts the runner needs about it."""

    scenario: object  # avalanche CLScenario with train_stream / test_stream
    dataset: str
    num_classes: int
    class_order: list[int]
    task_classes: list[list[int]]  # classes of each task, in stream order
    class_names: list[str]
    train_sizes: list[int]
    test_sizes: list[int]

    @property
    def n_tasks(self) -> int:
        return len(self.task_classes)


class LabelledDataset(Dataset):
    """Images (tensor or any indexable source) with a ``targets`` list, as Avalanche expects."""

    def __init__(self, source, targets: list[int], transform=None) -> None:
        self.source = source
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = self.source[index]
        if isinstance(img, tuple):  # a dataset that returns (image, label)
            img = img[0]
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


class _TrainingTransform:
    """The training transform, or the evaluation one inside :func:`clean_training_views`: a pass
    that gathers class statistics sees the training images as test images look (no augmentation),
    through the same datasets and experiences as training."""

    clean = False

    def __init__(self, train, evaluation) -> None:
        self.train, self.evaluation = train, evaluation

    def __call__(self, img):
        if _TrainingTransform.clean:
            return self.evaluation(img) if self.evaluation is not None else img
        return self.train(img) if self.train is not None else img


class clean_training_views:  # noqa: N801 (used as a context manager, like torch.no_grad)
    """Within this context (same process: a loader with no workers) training images come with the
    evaluation transform."""

    def __enter__(self):
        self._before = _TrainingTransform.clean
        _TrainingTransform.clean = True
        return self

    def __exit__(self, *exc) -> None:
        _TrainingTransform.clean = self._before


# The validation split draws from its own stream, so it is not the PERCENTAGE or test split of the same seed.
VALIDATION_SEED_OFFSET = 7919


def task_split(cfg: CfgNode, num_classes: int) -> list[int]:
    """Classes per task from ``CONTINUAL.INITIAL/INCREMENT/N_TASKS``; they must cover every class."""
    c = cfg.CONTINUAL
    if c.N_TASKS < 1 or c.INITIAL < 1 or (c.N_TASKS > 1 and c.INCREMENT < 1):
        raise CasdapError(
            f"CONTINUAL.N_TASKS ({c.N_TASKS}), INITIAL ({c.INITIAL}) and INCREMENT ({c.INCREMENT}) must be positive"
        )
    sizes = [c.INITIAL] + [c.INCREMENT] * (c.N_TASKS - 1)
    if sum(sizes) != num_classes:
        raise CasdapError(
            f"the data set has {num_classes} classes, but CONTINUAL.INITIAL {c.INITIAL} + "
            f"{c.N_TASKS - 1} x INCREMENT {c.INCREMENT} = {sum(sizes)}: the classes do not divide into the tasks. "
            f"Pick values with INITIAL + (N_TASKS - 1) * INCREMENT = {num_classes}"
        )
    return sizes


def _image_transforms(cfg: CfgNode):
    """Training / evaluation transforms for PIL images at ``DATA.CROPSIZE`` (``casdap.data.transforms``)."""
    from casdap.data.transforms import eval_transform, train_transform

    size = cfg.DATA.CROPSIZE
    c = cfg.CONTINUAL
    train = train_transform(size, color_jitter=c.COLOR_JITTER, auto_augment=c.AA, re_prob=c.REPROB, re_mode=c.REMODE,
                            re_count=c.RECOUNT)
    # Small inputs (CIFAR at 32 px) are not centre-cropped: there is nothing to spare.
    return train, eval_transform(size, crop_pct=0.875 if size >= 128 else 1.0)


def _seeded_split(targets: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Per-class seeded split: ``fraction`` of each class goes to the test side."""
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    train, test = [], []
    for cls in sorted(by_class):
        idx = by_class[cls]
        perm = torch.randperm(len(idx), generator=g).tolist()
        n_test = min(len(idx), max(1, int(round(len(idx) * fraction))))
        test += [idx[p] for p in perm[:n_test]]
        train += [idx[p] for p in perm[n_test:]]
    return sorted(train), sorted(test)


def _digits(cfg: CfgNode, seed: int):
    from casdap.data.digits import load_digits_tensors

    x, y = load_digits_tensors(cfg.DATA.CROPSIZE)
    x = (x - DIGITS_MEAN) / DIGITS_STD
    train_idx, test_idx = _seeded_split(y.tolist(), 0.25, seed)
    names = [str(i) for i in range(10)]
    train = LabelledDataset(x[train_idx], y[train_idx].tolist())
    test = LabelledDataset(x[test_idx], y[test_idx].tolist())
    return train, test, names


def _embedded_shift(cfg: CfgNode, seed: int):
    """Rendered characters the embedded backbone never saw, in another look (casdap/data/glyph_stream.py);
    separate training and test renders, both drawn from ``seed``, on the digits' input scale."""
    from casdap.data import glyph_stream

    x_tr, y_tr, x_te, y_te = glyph_stream.render_shift_stream(
        seed, glyph_stream.TRAIN_PER_CLASS, glyph_stream.TEST_PER_CLASS, int(cfg.DATA.CROPSIZE))
    train = LabelledDataset((x_tr - DIGITS_MEAN) / DIGITS_STD, y_tr.tolist())
    test = LabelledDataset((x_te - DIGITS_MEAN) / DIGITS_STD, y_te.tolist())
    return train, test, glyph_stream.shift_class_names()


def _embedded_domains(cfg: CfgNode, seed: int):
    """A domain per task: the real digits, then four unseen scripts each in its own look
    (casdap/data/domain_stream.py); separate training and test images, on the digits' input scale."""
    from casdap.data import domain_stream

    x_tr, y_tr, x_te, y_te = domain_stream.render_domain_stream(
        seed, domain_stream.TRAIN_PER_CLASS, domain_stream.TEST_PER_CLASS, int(cfg.DATA.CROPSIZE))
    train = LabelledDataset((x_tr - DIGITS_MEAN) / DIGITS_STD, y_tr.tolist())
    test = LabelledDataset((x_te - DIGITS_MEAN) / DIGITS_STD, y_te.tolist())
    return train, test, domain_stream.domain_class_names()


def _cifar(cfg: CfgNode, variant: str):
    from casdap.data.cifar import CIFARLocal

    train_tf, test_tf = _image_transforms(cfg)
    train = CIFARLocal(cfg.DATA.DATAPATH or None, train=True, variant=variant)
    test = CIFARLocal(cfg.DATA.DATAPATH or None, train=False, variant=variant)
    return (LabelledDataset(train, train.targets, train_tf), LabelledDataset(test, test.targets, test_tf),
            list(train.classes))


def _folder(cfg: CfgNode, seed: int):
    from torchvision.datasets import ImageFolder

    root = Path(cfg.DATA.DATAPATH or ".")
    if not root.is_dir():
        raise CasdapError(
            f"folder data set '{root}' does not exist. Set DATA.DATAPATH (or --data_path) to a folder with "
            "train/ and test/ (or val/) class folders, or one folder of class folders"
        )
    train_tf, test_tf = _image_transforms(cfg)
    try:
        held_out = root / "test" if (root / "test").is_dir() else root / "val"  # val/: the ImageNet layout
        if (root / "train").is_dir() and held_out.is_dir():
            tr, te = ImageFolder(str(root / "train")), ImageFolder(str(held_out))
            if tr.classes != te.classes:
                missing = sorted(set(tr.classes) ^ set(te.classes))[:5]
                raise CasdapError(
                    f"'{root}/train' and '{held_out}' must hold the same class folders (differ in {missing})"
                )
            return (LabelledDataset(tr, tr.targets, train_tf), LabelledDataset(te, te.targets, test_tf),
                    list(tr.classes))
        full = ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as e:
        raise CasdapError(f"cannot read image folders under '{root}': {e}") from None
    if not 0.0 < cfg.DATA.TEST_SPLIT < 1.0:
        raise CasdapError(f"DATA.TEST_SPLIT must be in (0, 1) to split '{root}', got {cfg.DATA.TEST_SPLIT}")
    train_idx, test_idx = _seeded_split(full.targets, cfg.DATA.TEST_SPLIT, seed)
    targets = full.targets
    return (
        LabelledDataset(Subset(full, train_idx), [targets[i] for i in train_idx], train_tf),
        LabelledDataset(Subset(full, test_idx), [targets[i] for i in test_idx], test_tf),
        list(full.classes),
    )


def _subset(ds: LabelledDataset, keep: list[int], targets: list[int] | None = None) -> LabelledDataset:
    targets = ds.targets if targets is None else targets
    return LabelledDataset(Subset(ds.source, keep), [targets[i] for i in keep], ds.transform)


def _dap(cfg: CfgNode, name: str, seed: int, rank: int):
    """One of DAP's nine names (casdap/data/dap_datasets.py): its TFDS folder under ``DATA.DATAPATH``
    when there is one, else CIFAR's own layout (cifar100) or image folders; the labels past
    ``DATA.NUMBER_CLASSES`` dropped, as DAP's tasks drop them."""
    from casdap.data.dap_datasets import imagenet_r_folder_labels, keep_labels, read_tfds

    root = Path(cfg.DATA.DATAPATH or ".")
    if (root / name.split("/")[0]).is_dir():  # eurosat/ without rgb/ is a TFDS folder, not a class folder
        train_tf, test_tf = _image_transforms(cfg)
        (tr, y_tr), (te, y_te), names = read_tfds(name, root)
        train, test = LabelledDataset(tr, y_tr, train_tf), LabelledDataset(te, y_te, test_tf)
    elif name == "cifar100":
        train, test, names = _cifar(cfg, name)
    else:
        if not root.is_dir() or not any(p.is_dir() for p in root.iterdir()):
            raise CasdapError(
                f"no '{name}' data under '{root}': set DATA.DATAPATH to the folder tensorflow-datasets prepared "
                f"(it holds {name}/<version>/), or to image folders (train/ and test/ class folders, or one "
                "folder of class folders)")
        train, test, names = _folder(cfg, seed)
        order = imagenet_r_folder_labels(names) if name == "imagenet_r" else None
        if order is not None:  # ImageNet-R's WordNet-id folders take DAP's labels
            train, test = (_subset(d, list(range(len(d))), [order[t] for t in d.targets]) for d in (train, test))
            names = [names[order.index(k)] for k in range(len(order))]
    keep = keep_labels(cfg.DATA.NAME, len(names), cfg.DATA.NUMBER_CLASSES)
    if keep < len(names):
        train, test = (_subset(d, [i for i, t in enumerate(d.targets) if t < keep]) for d in (train, test))
        if rank == 0:
            print(f"casdap cl: '{cfg.DATA.NAME}' has {len(names)} classes; DATA.NUMBER_CLASSES {keep} keeps labels "
                  f"0-{keep - 1} (DAP's tasks) and leaves out the images of {len(names) - keep}", flush=True)
        names = names[:keep]
    return train, test, names


def shard(dataset: LabelledDataset, rank: int, world: int) -> LabelledDataset:
    """This rank's equal share of every class (so every rank runs the same number of steps)."""
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(dataset.targets):
        by_class.setdefault(t, []).append(i)
    keep = []
    for idx in by_class.values():
        per_rank = len(idx) // world
        keep += idx[rank::world][:per_rank]
    keep.sort()
    source = Subset(dataset.source, keep)
    return LabelledDataset(source, [dataset.targets[i] for i in keep], dataset.transform)


def build_benchmark(cfg: CfgNode, rank: int = 0, world: int = 1) -> ContinualBenchmark:
    """The class-incremental benchmark named by ``DATA.NAME`` (training data sharded over ranks)."""
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

    name = cfg.DATA.NAME.lower().replace("-", "_")
    seed = 0 if cfg.SEED is None else int(cfg.SEED)
    if name == "digits":
        train, test, names = _digits(cfg, seed)
    elif name == "embedded_shift":
        train, test, names = _embedded_shift(cfg, seed)
    elif name == "embedded_domains":
        train, test, names = _embedded_domains(cfg, seed)
    elif name == "cifar10":
        train, test, names = _cifar(cfg, name)
    elif name == "folder":
        train, test, names = _folder(cfg, seed)
    elif name in DATASETS or name == "imagenetr":
        train, test, names = _dap(cfg, "imagenet_r" if name == "imagenetr" else name, seed, rank)
    else:
        raise CasdapError(f"unknown DATA.NAME '{cfg.DATA.NAME}' (use one of {', '.join(DATASETS)})")

    num_classes = len(names)
    if cfg.DATA.NUMBER_CLASSES > 0 and cfg.DATA.NUMBER_CLASSES != num_classes:
        raise CasdapError(
            f"DATA.NUMBER_CLASSES is {cfg.DATA.NUMBER_CLASSES}, but '{cfg.DATA.NAME}' has {num_classes} classes"
        )
    for split, ds in (("training", train), ("test", test)):
        missing = sorted(set(range(num_classes)) - set(ds.targets))
        if missing:
            raise CasdapError(f"the {split} data of '{cfg.DATA.NAME}' has no images of classes {missing[:10]}")
    sizes = task_split(cfg, num_classes)
    check_data_shares(cfg)
    if cfg.DATA.VALIDATION > 0:  # the held-out training images replace the test set
        fit, held = _seeded_split(train.targets, cfg.DATA.VALIDATION, seed + VALIDATION_SEED_OFFSET)
        test = LabelledDataset(Subset(train.source, held), [train.targets[i] for i in held], test.transform)
        train = LabelledDataset(Subset(train.source, fit), [train.targets[i] for i in fit], train.transform)
    if cfg.DATA.PERCENTAGE < 1.0:  # DAP's few-shot setting: a seeded share of each class's training images
        _, keep = _seeded_split(train.targets, cfg.DATA.PERCENTAGE, seed)
        train = LabelledDataset(Subset(train.source, keep), [train.targets[i] for i in keep], train.transform)
    train = LabelledDataset(train.source, train.targets, _TrainingTransform(train.transform, test.transform))
    if cfg.CONTINUAL.SHUFFLE_CLASSES:
        order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    else:
        order = list(range(num_classes))
    if world > 1:
        train = shard(train, rank, world)

    scenario = class_incremental_benchmark(
        {"train": train, "test": test}, class_order=order, num_classes_per_exp=sizes
    )
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    task_classes = [order[bounds[i]:bounds[i + 1]] for i in range(len(sizes))]
    return ContinualBenchmark(
        scenario=scenario,
        dataset=name,
        num_classes=num_classes,
        class_order=order,
        task_classes=task_classes,
        class_names=names,
        train_sizes=[len(e.dataset) for e in scenario.train_stream],
        test_sizes=[len(e.dataset) for e in scenario.test_stream],
    )
