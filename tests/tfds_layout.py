"""Writes folders in tensorflow-datasets 4.x's on-disk layout, as the tests and benchmarks need them.

``<root>/<name>/<version>/``: ``<dataset>-<split>.tfrecord-NNNNN-of-NNNNN`` shards of
``tf.train.Example`` records (``image``: encoded PNG/JPEG bytes, ``label``: int64) with valid CRCs,
``dataset_info.json`` (splits with their shard lengths), ``features.json`` and ``label.labels.txt``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from casdap.data.tfrecord import example_class, frame_record

__all__ = ["encode_image", "serialize", "write_tfds", "class_image"]


def encode_image(array: np.ndarray, fmt: str = "PNG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def class_image(label: int, index: int, size: int = 8) -> np.ndarray:
    """A small image whose colour says its class (plus a little noise by index)."""
    rng = np.random.default_rng(1000 * label + index)
    colour = np.array([(37 * label) % 256, (91 * label) % 256, (53 * label + 17) % 256])
    return np.clip(colour + rng.integers(-10, 10, (size, size, 3)), 0, 255).astype(np.uint8)


def serialize(image: bytes, label: int) -> bytes:
    example = example_class()()
    example.features.feature["image"].bytes_list.value.append(image)
    example.features.feature["label"].int64_list.value.append(int(label))
    return example.SerializeToString()


def write_tfds(root: Path, name: str, splits: dict[str, list[int]], *, version: str = "1.0.0",
               num_classes: int | None = None, shards: int = 2, size: int = 8, fmt: str = "PNG",
               old_features: bool = False, class_names: list[str] | None = None) -> Path:
    """One prepared version of ``name`` (``eurosat/rgb`` makes ``eurosat/rgb/<version>/``); ``splits``
    maps a split to its labels in file order. Returns the version folder."""
    folder = root / name / version
    folder.mkdir(parents=True, exist_ok=True)
    dataset = name.split("/")[0]
    num_classes = num_classes or max(max(v, default=0) for v in splits.values()) + 1
    info_splits = []
    for split, labels in splits.items():
        n_shards = min(shards, max(1, len(labels)))
        bounds = np.linspace(0, len(labels), n_shards + 1).astype(int)
        lengths = []
        for i in range(n_shards):
            path = folder / f"{dataset}-{split}.tfrecord-{i:05d}-of-{n_shards:05d}"
            with open(path, "wb") as f:
                for j in range(bounds[i], bounds[i + 1]):
                    f.write(frame_record(serialize(encode_image(class_image(labels[j], j, size), fmt), labels[j])))
            lengths.append(str(bounds[i + 1] - bounds[i]))
        info_splits.append({"name": split, "numBytes": "0", "shardLengths": lengths,
                            "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"})
    info = {"name": dataset, "version": version, "fileFormat": "tfrecord", "splits": info_splits,
            "moduleName": f"tensorflow_datasets.image_classification.{dataset}"}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2))
    if old_features:
        features = {"type": "tensorflow_datasets.core.features.features_dict.FeaturesDict", "content": {
            "image": {"type": "tensorflow_datasets.core.features.image_feature.Image",
                      "content": {"shape": [None, None, 3], "dtype": "uint8", "encoding_format": fmt.lower()}},
            "label": {"type": "tensorflow_datasets.core.features.class_label_feature.ClassLabel",
                      "content": {"num_classes": num_classes}}}}
    else:
        features = {"pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
                    "featuresDict": {"features": {
                        "image": {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
                                  "image": {"shape": {"dimensions": ["-1", "-1", "3"]}, "dtype": "uint8",
                                            "encodingFormat": fmt.lower()}},
                        "label": {"pythonClassName": "tensorflow_datasets.core.features.class_label_feature.ClassLabel",
                                  "classLabel": {"numClasses": str(num_classes)}}}}}
    (folder / "features.json").write_text(json.dumps(features, indent=2))
    names = class_names or [f"class_{i}" for i in range(num_classes)]
    (folder / "label.labels.txt").write_text("\n".join(names) + "\n")
    return folder
