"""Folders prepared by tensorflow-datasets 4.x, read without TensorFlow and without loading them whole.

The layout: ``<data_dir>/<name>/[<config>/]<version>/`` (``:*.*.*`` takes the newest version that
holds a ``dataset_info.json``), with ``<name>-<split>.tfrecord-NNNNN-of-NNNNN`` shards of
``tf.train.Example`` records (``casdap.data.tfrecord``), ``dataset_info.json`` (the splits and their
shard lengths), ``features.json`` (the class count) and ``<feature>.labels.txt`` (class names).
A split is read in two steps: one pass over its shards checks every record's CRCs and keeps each
record's place and label (about 24 bytes a record); images are then read one at a time from those
places and decoded when asked for. Memory stays flat in the data set's size.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from casdap.errors import CasdapError

__all__ = ["TFDSInfo", "TFDSSplit", "find_version", "read_info", "is_tfds_folder"]

DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def _versions(folder: Path) -> list[Path]:
    """The prepared versions under a data set's folder, newest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _VERSION.match(p.name) and (p / "dataset_info.json").is_file()]
    return sorted(found, key=lambda p: tuple(int(x) for x in p.name.split(".")), reverse=True)


def is_tfds_folder(data_dir: str | Path, name: str) -> bool:
    """Whether ``data_dir`` holds a prepared version of ``name`` (``eurosat/rgb``, ``cifar100``)."""
    return bool(_versions(Path(data_dir) / name))


def find_version(data_dir: str | Path, name: str) -> Path:
    """``<data_dir>/<name>/<newest version>/``, as ``tfds.builder(name + ':*.*.*', data_dir)`` finds it."""
    folder = Path(data_dir) / name
    versions = _versions(folder)
    if not versions:
        what = ("does not exist" if not folder.is_dir()
                else "holds no version folder (such as 1.0.0/) with a dataset_info.json")
        raise CasdapError(f"TFDS data set '{name}': '{folder}' {what}. Set DATA.DATAPATH to the folder that "
                          f"tensorflow-datasets prepared (it holds {name}/<version>/)")
    return versions[0]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CasdapError(f"TFDS folder '{path.parent}' has no {path.name}: prepare the data set again") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CasdapError(f"'{path}' is not valid JSON ({e}): prepare the data set again") from None


def _num_classes(features: dict, key: str) -> int | None:
    """The ``ClassLabel`` size of ``key`` in features.json, in the layout of tfds >= 4.6 or before."""
    new = features.get("featuresDict", {}).get("features", {}).get(key, {})
    if "classLabel" in new:
        return int(new["classLabel"].get("numClasses", 0)) or None
    old = features.get("content", {}).get(key, {})
    if "ClassLabel" in str(old.get("type", "")):
        return int(old.get("content", {}).get("num_classes", 0)) or None
    return None


@dataclass
class TFDSInfo:
    """What a prepared version folder says about itself."""

    folder: Path
    dataset: str  # the builder's name, which starts every shard's file name
    file_format: str
    template: dict[str, str]  # split -> file path template
    shard_lengths: dict[str, list[int]]  # split -> records per shard
    num_classes: int | None
    class_names: list[str] | None

    def split_files(self, split: str) -> list[Path]:
        if split not in self.shard_lengths:
            raise CasdapError(f"TFDS folder '{self.folder}' has no split '{split}' (it has: "
                              f"{', '.join(sorted(self.shard_lengths)) or 'none'}): prepare the data set with it")
        n = len(self.shard_lengths[split])
        return [self.folder / self.template[split].format(
            DATASET=self.dataset, SPLIT=split, FILEFORMAT=self.file_format, SHARD_X_OF_Y=f"{i:05d}-of-{n:05d}",
            SHARD_INDEX=f"{i:05d}", NUM_SHARDS=f"{n:05d}") for i in range(n)]


def read_info(folder: Path, label_key: str = "label") -> TFDSInfo:
    """Parse ``dataset_info.json``, ``features.json`` and the label names of one version folder."""
    info = _read_json(folder / "dataset_info.json")
    file_format = info.get("fileFormat", "tfrecord") or "tfrecord"
    if file_format != "tfrecord":
        raise CasdapError(f"TFDS folder '{folder}' is in the '{file_format}' format; only tfrecord is read. "
                          "Prepare it with tensorflow-datasets' default file format")
    lengths, templates = {}, {}
    for split in info.get("splits", []):
        if "shardLengths" in split:
            lengths[split["name"]] = [int(n) for n in split["shardLengths"]]
        else:  # before tfds 4.0: a shard count and a total only
            shards = int(split.get("numShards", 1))
            total = int(split.get("statistics", {}).get("numExamples", -1))
            lengths[split["name"]] = [-1] * shards if shards > 1 else [total]
        templates[split["name"]] = split.get("filepathTemplate") or DEFAULT_TEMPLATE
    features = folder / "features.json"
    num_classes = _num_classes(_read_json(features), label_key) if features.is_file() else None
    names_file = folder / f"{label_key}.labels.txt"
    names = names_file.read_text(encoding="utf-8").splitlines() if names_file.is_file() else None
    return TFDSInfo(folder, info.get("name") or folder.parent.name, file_format, templates, lengths,
                    num_classes or (len(names) if names else None), names)


class TFDSSplit:
    """The records of one split, indexed by one checked pass; ``split[i]`` is the i-th image (PIL, RGB)
    in file order and ``labels[i]`` its label."""

    def __init__(self, info: TFDSInfo, split: str, image_key: str = "image", label_key: str = "label") -> None:
        from casdap.data.tfrecord import parse_example, scan_records

        self.files = info.split_files(split)
        self.image_key = image_key
        shards, offsets, lengths, labels = [], [], [], []
        for i, (path, expected) in enumerate(zip(self.files, info.shard_lengths[split])):
            if not path.is_file():
                raise CasdapError(f"TFDS split '{split}' of '{info.folder}' misses its shard '{path.name}': "
                                  "copy or prepare the data set again")
            count = 0
            for offset, data in scan_records(path):
                labels.append(parse_example(data, path, offset, {label_key: "int64"})[label_key])
                shards.append(i)
                offsets.append(offset)
                lengths.append(len(data))
                count += 1
            if expected >= 0 and count != expected:
                raise CasdapError(f"TFRecord file '{path}' holds {count} records, but dataset_info.json says "
                                  f"{expected}: it is truncated or from another preparation; copy or prepare it again")
        self.shards = np.asarray(shards, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict:  # a worker process opens its own files
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker: the parent's descriptors share a file position
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            self._fds[shard] = os.open(self.files[shard], os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return self._fds[shard]

    def read(self, index: int) -> bytes:
        """The serialized Example of record ``index``; its header is checked again (a file replaced
        since the pass fails here)."""
        from casdap.data.tfrecord import FOOTER, HEADER, check_header

        shard, offset, length = int(self.shards[index]), int(self.offsets[index]), int(self.lengths[index])
        fd = self._fd(shard)
        size = HEADER + length + FOOTER
        if hasattr(os, "pread"):
            raw = os.pread(fd, size, offset)
        else:
            os.lseek(fd, offset, os.SEEK_SET)
            raw = os.read(fd, size)
        path = self.files[shard]
        if check_header(path, offset, raw) != length or len(raw) < size:
            raise CasdapError(f"TFRecord file '{path}' changed since it was read at the start of the run: "
                              "restart the run on an unchanged copy")
        return raw[HEADER:HEADER + length]

    def __getitem__(self, index: int):
        from PIL import Image

        from casdap.data.tfrecord import parse_example

        path = self.files[int(self.shards[index])]
        offset = int(self.offsets[index])
        data = parse_example(self.read(index), path, offset, {self.image_key: "bytes"})[self.image_key]
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.convert("RGB")
        except (OSError, ValueError) as e:
            raise CasdapError(f"TFRecord file '{path}': the image of the record at byte {offset} cannot be "
                              f"decoded ({e})") from None

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
