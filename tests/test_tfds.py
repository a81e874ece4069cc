"""DAP's data sets from tensorflow-datasets folders, read without TensorFlow (casdap/data/tfds.py,
dap_datasets.py), on folders the tests write in that layout (tests/tfds_layout.py)."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import pytest
from cl_support import DIGITS_YAML, run_casdap
from PIL import Image
from test_config import DAP_BASE, DAP_CIFAR, DAP_IMAGENET_R
from tfds_layout import class_image, write_tfds

from casdap import CasdapError
from casdap.config import load_config
from casdap.data.crc32c import crc32c, masked_crc32c
from casdap.data.dap_datasets import DAP_DATASETS, imagenet_r_folder_labels, read_tfds
from casdap.data.imagenet_r_labels import IMAGENET_R_IDS, imagenet_r_label_of
from casdap.data.tfrecord import parse_example

DAP_EUROSAT = """_BASE_: "../base-dap.yaml"
CONTINUAL:
  INITIAL: 2
  INCREMENT: 2
  N_TASKS: 5
DATA:
  NAME: "eurosat/rgb"
  NUMBER_CLASSES: 10
MODEL:
  DAP:
    NUM_TASKS_FOR_EMB: 5
    PROMPT_POOL: 5
SOLVER:
  TOTAL_EPOCH: 5
SEED: 42
OUTPUT_DIR: "./results/seed42"
"""


def test_crc32c_matches_the_published_check_values():
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720's check value
    assert crc32c(bytes(32)) == 0x8A9136AA and crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720, B.4
    assert crc32c(b"") == 0
    rng = np.random.default_rng(0)
    for n in (1, 511, 512, 513, 4097):  # around the block size, against a plain byte loop
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        reg = 0xFFFFFFFF
        for b in data:
            reg ^= b
            for _ in range(8):
                reg = (reg >> 1) ^ (0x82F63B78 if reg & 1 else 0)
        assert crc32c(data) == reg ^ 0xFFFFFFFF, n
    crc = crc32c(b"abc")
    assert masked_crc32c(b"abc") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_a_tf_example_is_parsed_by_tensorflows_field_numbers():
    # Example{features{feature{key "label" value{int64_list{value: 3}}}}}, written out by hand
    raw = bytes([0x0A, 0x10, 0x0A, 0x0E, 0x0A, 0x05]) + b"label" + bytes([0x12, 0x05, 0x1A, 0x03, 0x0A, 0x01, 0x03])
    assert parse_example(raw, "f", 0, {"label": "int64"}) == {"label": 3}
    with pytest.raises(CasdapError, match="has no bytes feature 'image' \\(it has label\\)"):
        parse_example(raw, "f", 0, {"image": "bytes"})


def _labels(name: str) -> dict[str, list[int]]:
    """Label sequences (file order) for every split a name reads, with every class on both sides of a cut."""
    if name == "imagenet_r":
        ids = list(IMAGENET_R_IDS[:4])  # ImageNet ids, as tfds labels ImageNet-R
        return {"test": [ids[i % 4] for i in range(23)]}
    if DAP_DATASETS[name] == "train":
        return {"train": [(3 * i) % 5 for i in range(23)]}
    return {"train": [(i * 7) % 5 for i in range(17)], "test": [i % 5 for i in range(9)]}


@pytest.mark.parametrize("name", sorted(DAP_DATASETS))
def test_each_name_reads_its_splits_by_daps_rule(tmp_path, name):
    splits = _labels(name)
    write_tfds(tmp_path, name, splits, shards=3, num_classes=1000 if name == "imagenet_r" else 5)
    (train, y_train), (test, y_test), names = read_tfds(name, tmp_path)
    cut = DAP_DATASETS[name]
    if cut is None:
        expected = {"train": (splits["train"], range(len(splits["train"]))),
                    "test": (splits["test"], range(len(splits["test"])))}
    else:
        labels, n = splits[cut], len(splits[cut]) * 80 // 100  # train[:N] / train[N:] in file order
        expected = {"train": (labels[:n], range(n)), "test": (labels[n:], range(n, len(labels)))}
    label_of = imagenet_r_label_of()
    for got, images, (labels, positions) in ((y_train, train, expected["train"]), (y_test, test, expected["test"])):
        assert got == ([label_of[x] for x in labels] if name == "imagenet_r" else labels)
        for k in (0, len(labels) - 1):  # the image at that place of the file order, across shards
            assert np.array_equal(np.asarray(images[k]), class_image(labels[k], positions[k]))
    assert len(names) == (200 if name == "imagenet_r" else 5)


def test_imagenet_r_label_table_is_daps():
    table = imagenet_r_label_of()
    # sha256 of DAP's IR_LABEL_MAP written as "id:label" pairs in id order, joined by commas
    text = ",".join(f"{k}:{table[k]}" for k in sorted(table))
    digest = "abc247c70665c589434193b3356288cbd52b188039654769399399f3aac7db86"
    assert hashlib.sha256(text.encode()).hexdigest() == digest
    assert sorted(table.values()) == list(range(200)) and len(table) == 200
    assert (table[1], table[195], table[988], table[390]) == (162, 0, 133, 199)
    # ImageNet-R's WordNet-id folders, sorted, are its ImageNet ids in increasing order
    wnids = [f"n{i:08d}" for i in range(200)]
    assert imagenet_r_folder_labels(wnids) == [table[i] for i in sorted(table)]
    assert imagenet_r_folder_labels(["cat", "dog"]) is None


def test_the_newest_prepared_version_is_read(tmp_path):
    write_tfds(tmp_path, "eurosat/rgb", {"train": [0] * 10}, version="2.0.0")
    write_tfds(tmp_path, "eurosat/rgb", {"train": [1] * 10}, version="10.0.0")  # numerically newest
    write_tfds(tmp_path, "eurosat/rgb", {"train": [2] * 10}, version="9.1.0")
    (tmp_path / "eurosat/rgb/11.0.0").mkdir()  # no dataset_info.json: not prepared
    (tmp_path / "eurosat/rgb/12.0.0.incompleteABC").mkdir()  # tfds's half-written folder
    (_, y_train), (_, y_test), _ = read_tfds("eurosat/rgb", tmp_path)
    assert set(y_train + y_test) == {1}


@pytest.mark.parametrize("old", [False, True])
def test_the_class_count_comes_from_features_json_of_either_tfds_form(tmp_path, old):
    from casdap.data.tfds import read_info

    folder = write_tfds(tmp_path, "oxford_iiit_pet", {"train": [0, 1]}, num_classes=37, old_features=old)
    (folder / "label.labels.txt").unlink()  # the count then comes from features.json alone
    assert read_info(folder).num_classes == 37


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("damage", ["data", "length", "truncated", "missing_shard"])
def test_a_damaged_file_is_one_line_naming_it(tmp_path, damage):
    folder = write_tfds(tmp_path, "eurosat/rgb", {"train": [i % 3 for i in range(12)]}, shards=2)
    shard = folder / "eurosat-train.tfrecord-00001-of-00002"
    raw = bytearray(shard.read_bytes())
    if damage == "data":
        raw[len(raw) // 2] ^= 0x40
    elif damage == "length":
        raw[2] ^= 0x01
    elif damage == "truncated":
        raw = raw[:-7]
    if damage == "missing_shard":
        shard.unlink()
    else:
        shard.write_bytes(bytes(raw))
    with pytest.raises(CasdapError) as err:
        read_tfds("eurosat/rgb", tmp_path)
    message = _one_line(err)
    assert shard.name in message
    said = {"data": "corrupt", "length": "corrupt", "truncated": "truncated", "missing_shard": "misses"}
    assert said[damage] in message


def test_a_shard_shorter_than_dataset_info_says_is_named(tmp_path):
    folder = write_tfds(tmp_path, "resisc45", {"train": [0, 1] * 5}, shards=2)
    info = json.loads((folder / "dataset_info.json").read_text())
    info["splits"][0]["shardLengths"][0] = "6"
    (folder / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(CasdapError, match="holds 5 records, but dataset_info.json says 6") as err:
        read_tfds("resisc45", tmp_path)
    assert "resisc45-train.tfrecord-00000-of-00002" in _one_line(err)


def test_labels_past_the_declared_classes_are_one_line(tmp_path):
    write_tfds(tmp_path, "resisc45", {"train": [0, 1, 6, 2]}, num_classes=5)
    with pytest.raises(CasdapError, match="has labels outside 0..4, the 5 classes its features.json declares") as err:
        read_tfds("resisc45", tmp_path)
    _one_line(err)


def test_a_missing_split_is_one_line(tmp_path):
    write_tfds(tmp_path, "cifar100", {"train": [0, 1, 2]})
    with pytest.raises(CasdapError, match="has no split 'test' \\(it has: train\\)") as err:
        read_tfds("cifar100", tmp_path)
    _one_line(err)
    with pytest.raises(CasdapError, match="'.*imagenet_r' does not exist. Set DATA.DATAPATH"):
        read_tfds("imagenet_r", tmp_path)
    write_tfds(tmp_path, "eurosat/all", {"train": [0, 1, 2]})  # another config of the same data set
    with pytest.raises(CasdapError, match="'.*eurosat/rgb' does not exist. Set DATA.DATAPATH"):
        _benchmark("eurosat/rgb", tmp_path)


def _benchmark(name: str, root, *extra: str):
    from casdap.continual.benchmarks import build_benchmark

    return build_benchmark(load_config(DIGITS_YAML, ["DATA.NAME", name, "DATA.DATAPATH", str(root),
                                                     "DATA.CROPSIZE", "16", *extra]))


def test_number_classes_drops_the_labels_past_daps_last_task_and_more_than_the_data_is_an_error(tmp_path, capsys):
    write_tfds(tmp_path, "oxford_iiit_pet", {"train": [i % 7 for i in range(14)], "test": [i % 7 for i in range(7)]})
    bench = _benchmark("oxford_iiit_pet", tmp_path, "DATA.NUMBER_CLASSES", "6", "CONTINUAL.INITIAL", "2",
                       "CONTINUAL.INCREMENT", "2", "CONTINUAL.N_TASKS", "3")
    assert bench.num_classes == 6 and bench.train_sizes == [4, 4, 4] and bench.test_sizes == [2, 2, 2]
    assert "has 7 classes; DATA.NUMBER_CLASSES 6 keeps labels 0-5" in capsys.readouterr().out
    with pytest.raises(CasdapError, match="DATA.NUMBER_CLASSES is 9, but 'oxford_iiit_pet' has 7 classes") as err:
        _benchmark("oxford_iiit_pet", tmp_path, "DATA.NUMBER_CLASSES", "9", "CONTINUAL.INITIAL", "3",
                   "CONTINUAL.INCREMENT", "3", "CONTINUAL.N_TASKS", "3")
    _one_line(err)


def test_imagenet_r_tasks_follow_daps_table_from_tfds_and_from_wordnet_folders(tmp_path):
    ids = sorted(IMAGENET_R_IDS)
    write_tfds(tmp_path / "tfds", "imagenet_r", {"test": ids * 5}, num_classes=1000, shards=4)
    overrides = ("DATA.NUMBER_CLASSES", "200", "CONTINUAL.INITIAL", "20", "CONTINUAL.INCREMENT", "20",
                 "CONTINUAL.N_TASKS", "10")
    bench = _benchmark("imagenet_r", tmp_path / "tfds", *overrides)
    first_task = {int(t) for t in bench.scenario.train_stream[0].dataset.targets}
    assert first_task == set(range(20)) and bench.train_sizes == [80] * 10 and bench.test_sizes == [20] * 10
    for split in ("train", "test"):  # the same images as WordNet-id folders: the same labels
        for k, imagenet_id in enumerate(ids):
            folder = tmp_path / "folders" / split / f"n{imagenet_id:08d}"
            folder.mkdir(parents=True)
            Image.fromarray(class_image(imagenet_id, k)).save(folder / "a.png")
    folders = _benchmark("imagenet_r", tmp_path / "folders", *overrides)
    assert folders.class_names == [f"n{imagenet_id:08d}" for imagenet_id in IMAGENET_R_IDS]
    assert {int(t) for t in folders.scenario.train_stream[0].dataset.targets} == set(range(20))


def test_eurosat_from_image_folders(tmp_path):
    for split, per in (("train", 3), ("test", 1)):
        for c in range(10):
            (tmp_path / split / f"c{c}").mkdir(parents=True)
            for k in range(per):
                Image.fromarray(class_image(c, k)).save(tmp_path / split / f"c{c}" / f"{k}.png")
    bench = _benchmark("eurosat/rgb", tmp_path, "DATA.NUMBER_CLASSES", "10", "CONTINUAL.INITIAL", "2",
                       "CONTINUAL.INCREMENT", "2", "CONTINUAL.N_TASKS", "5")
    assert bench.train_sizes == [6] * 5 and bench.class_names[:2] == ["c0", "c1"]
    with pytest.raises(CasdapError, match="no 'isic' data under .*: set DATA.DATAPATH to the folder tensorflow"):
        _benchmark("isic", tmp_path / "train" / "c0")


# the per-data-set settings of DAP's files: NUMBER_CLASSES, INITIAL, INCREMENT, N_TASKS
DAP_SETTINGS = {"chestx": (6, 3, 3, 2), "cifar": (100, 10, 10, 10), "cropdisease": (35, 5, 5, 7),
                "domainnet": (345, 23, 23, 15), "eurosat": (10, 2, 2, 5), "imagenet_r": (200, 20, 20, 10),
                "isic": (6, 2, 2, 3), "pets": (35, 5, 5, 7), "resisc45": (45, 5, 5, 9)}


@pytest.mark.parametrize("config", sorted(DAP_SETTINGS))
def test_the_shipped_config_of_each_of_daps_data_sets(config):
    from casdap.continual.methods import check_config

    cfg = load_config(DIGITS_YAML.parent / f"{config}.yaml")
    check_config(cfg)
    c = cfg.CONTINUAL
    assert (cfg.DATA.NUMBER_CLASSES, c.INITIAL, c.INCREMENT, c.N_TASKS) == DAP_SETTINGS[config]
    assert cfg.DATA.NAME in DAP_DATASETS and cfg.DATA.CROPSIZE == 224 and cfg.MODEL.BACKBONE == "rcvit_xs"
    assert cfg.MODEL.DAP.PROMPT_POOL == cfg.MODEL.DAP.NUM_TASKS_FOR_EMB == c.N_TASKS
    assert cfg.MODEL.DAP.SIM_LAMBDA == {"resisc45": 0.5, "imagenet_r": 2.0}.get(config, 0.1)


TINY = ("MODEL.RANDOM_INIT", "True", "DATA.CROPSIZE", "32", "SOLVER.TOTAL_EPOCH", "1", "DATA.NUM_WORKERS", "0",
        "DEVICE", "cpu")


@pytest.mark.parametrize("config", ["cifar", "eurosat", "imagenetr"])
def test_daps_yaml_files_run_as_written_on_tfds_folders(tmp_path, config):
    """``casdap cl --config-file <DAP's file> DATA.DATAPATH <dir>``, only the size made tiny (random
    backbone, 32 px, one epoch); the classes and tasks are the file's."""
    (tmp_path / "configs" / "dap").mkdir(parents=True)
    (tmp_path / "configs" / "base-dap.yaml").write_text(DAP_BASE)
    text = {"cifar": DAP_CIFAR, "eurosat": DAP_EUROSAT, "imagenetr": DAP_IMAGENET_R}[config]
    (tmp_path / "configs" / "dap" / f"{config}.yaml").write_text(text)
    data = tmp_path / "data"
    extra: tuple[str, ...] = ()
    if config == "cifar":
        write_tfds(data, "cifar100", {"train": list(range(100)), "test": list(range(100))}, shards=2, size=4)
        tasks = 10
    elif config == "eurosat":
        write_tfds(data, "eurosat/rgb", {"train": [i % 10 for i in range(50)]}, size=4)
        tasks = 5
    else:  # 5 rounds of the 200 classes: the 80/20 cut leaves 4 of each for training, 1 for testing
        write_tfds(data, "imagenet_r", {"test": list(IMAGENET_R_IDS) * 5}, num_classes=1000, size=4)
        extra, tasks = ("DATA.PERCENTAGE", "0.25"), 10
    cmd = [sys.executable, "-m", "casdap", "cl", "--config-file", f"configs/dap/{config}.yaml",
           "DATA.DATAPATH", str(data), *TINY, *extra]
    r = run_casdap(cmd, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    metrics = json.loads((tmp_path / "results" / "seed42" / "metrics.json").read_text())
    assert metrics["finished"] and metrics["n_tasks"] == tasks and metrics["seed"] == 42
    assert metrics["dataset"] == load_config(tmp_path / "configs" / "dap" / f"{config}.yaml").DATA.NAME
    assert os.path.isfile(tmp_path / "results" / "seed42" / "final_results.txt")
