import numpy as np
import pytest
import torch
from cl_support import CIFAR_YAML, DIGITS_YAML, tiny_cifar_cfg, write_tiny_cifar
from PIL import Image

from casdap.config import load_config
from casdap.continual.benchmarks import build_benchmark
from casdap.errors import CasdapError


def test_digits_natural_order_and_seeded_split():
    bench = build_benchmark(load_config(DIGITS_YAML))
    assert bench.task_classes == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert sum(bench.train_sizes) + sum(bench.test_sizes) == 1797
    assert abs(sum(bench.test_sizes) / 1797 - 0.25) < 0.01
    exp = bench.scenario.train_stream[2]
    assert exp.current_experience == 2 and set(exp.classes_in_this_experience) == {4, 5}
    x, y, _ = exp.dataset[0]
    assert tuple(x.shape) == (3, 32, 32) and int(y) in (4, 5)
    # the same seed gives the same split, a different seed another one
    again = build_benchmark(load_config(DIGITS_YAML))
    other = build_benchmark(load_config(DIGITS_YAML, ["SEED", "1"]))

    def fingerprint(b):
        ds = b.scenario.test_stream[0].dataset
        return float(sum(ds[i][0].sum() for i in range(len(ds))))

    assert fingerprint(again) == pytest.approx(fingerprint(bench))
    assert fingerprint(other) != pytest.approx(fingerprint(bench))


def test_shuffled_class_order_is_seeded():
    a = build_benchmark(load_config(DIGITS_YAML, ["CONTINUAL.SHUFFLE_CLASSES", "True"]))
    b = build_benchmark(load_config(DIGITS_YAML, ["CONTINUAL.SHUFFLE_CLASSES", "True"]))
    c = build_benchmark(load_config(DIGITS_YAML, ["CONTINUAL.SHUFFLE_CLASSES", "True", "SEED", "3"]))
    assert a.class_order == b.class_order != list(range(10))
    assert c.class_order != a.class_order
    assert set(a.scenario.train_stream[0].classes_in_this_experience) == set(a.task_classes[0])


def test_uneven_first_task():
    bench = build_benchmark(load_config(DIGITS_YAML, ["CONTINUAL.INITIAL", "4", "CONTINUAL.INCREMENT", "3",
                                                      "CONTINUAL.N_TASKS", "3"]))
    assert bench.task_classes == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_classes_that_do_not_divide_into_tasks():
    cfg = load_config(DIGITS_YAML, ["CONTINUAL.INITIAL", "3", "CONTINUAL.INCREMENT", "3", "CONTINUAL.N_TASKS", "3"])
    with pytest.raises(CasdapError, match="10 classes.*do not divide"):
        build_benchmark(cfg)


def test_cifar100_layout_fixture(tmp_path):
    data = write_tiny_cifar(tmp_path / "cifar")
    bench = build_benchmark(tiny_cifar_cfg(data, tmp_path / "out"))
    assert bench.dataset == "cifar100" and bench.num_classes == 4
    assert bench.task_classes == [[0, 1], [2, 3]]
    assert bench.train_sizes == [16, 16] and bench.test_sizes == [8, 8]
    x, y, _ = bench.scenario.test_stream[1].dataset[0]
    assert tuple(x.shape) == (3, 32, 32) and int(y) in (2, 3)


def test_missing_cifar_data_is_one_clear_error(tmp_path):
    with pytest.raises(CasdapError, match="CIFAR100 not found.*cifar-100-python"):
        build_benchmark(tiny_cifar_cfg(tmp_path / "nowhere", tmp_path / "out"))


def test_folder_data_split_by_seeded_ratio(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(4):
        (tmp_path / "imgs" / f"cls{c}").mkdir(parents=True)
        for i in range(5):
            img = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
            img.save(tmp_path / "imgs" / f"cls{c}" / f"{i}.png")
    cfg = load_config(DIGITS_YAML, ["DATA.NAME", "folder", "DATA.DATAPATH", str(tmp_path / "imgs"),
                                    "DATA.NUMBER_CLASSES", "4", "DATA.TEST_SPLIT", "0.4", "CONTINUAL.INITIAL", "2",
                                    "CONTINUAL.N_TASKS", "2"])
    bench = build_benchmark(cfg)
    assert bench.class_names == ["cls0", "cls1", "cls2", "cls3"]
    assert bench.train_sizes == [6, 6] and bench.test_sizes == [4, 4]
    assert tuple(bench.scenario.train_stream[0].dataset[0][0].shape) == (3, 32, 32)


def test_unknown_data_set_and_missing_folder(tmp_path):
    with pytest.raises(CasdapError, match="unknown DATA.NAME 'mnist'"):
        build_benchmark(load_config(DIGITS_YAML, ["DATA.NAME", "mnist"]))
    with pytest.raises(CasdapError, match="does not exist"):
        build_benchmark(load_config(DIGITS_YAML, ["DATA.NAME", "folder", "DATA.DATAPATH", str(tmp_path / "none")]))


def test_imagenet_layout_train_and_val_is_read_by_data_set_imnet(tmp_path):
    """`--data_set IMNET` maps to folder data; ImageNet's train/ + val/ layout is its split."""
    from casdap.cli.cl import flag_overrides, parse_cl_args

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for c in range(4):
            (tmp_path / "imnet" / split / f"n0{c}").mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                    tmp_path / "imnet" / split / f"n0{c}" / f"{i}.png")
    args, opts = parse_cl_args(["--config-file", str(DIGITS_YAML), "--data_set", "IMNET", "--data_path",
                                str(tmp_path / "imnet"), "DATA.NUMBER_CLASSES", "4", "CONTINUAL.INITIAL", "2",
                                "CONTINUAL.N_TASKS", "2"])
    bench = build_benchmark(load_config(args.config_file, [*flag_overrides(args)[0], *opts]))
    assert bench.class_names == ["n00", "n01", "n02", "n03"]
    assert bench.train_sizes == [6, 6] and bench.test_sizes == [4, 4]


def _images(stream) -> set[bytes]:
    return {exp.dataset[i][0].numpy().tobytes() for exp in stream for i in range(len(exp.dataset))}


def test_validation_split_holds_out_training_images_and_never_reads_the_test_set():
    full = build_benchmark(load_config(DIGITS_YAML))
    val = build_benchmark(load_config(DIGITS_YAML, ["DATA.VALIDATION", "0.2"]))
    assert sum(val.train_sizes) + sum(val.test_sizes) == sum(full.train_sizes)
    assert abs(sum(val.test_sizes) / sum(full.train_sizes) - 0.2) < 0.01
    train_images, held_out, test_images = _images(val.scenario.train_stream), _images(val.scenario.test_stream), \
        _images(full.scenario.test_stream)
    assert held_out <= _images(full.scenario.train_stream)
    assert not held_out & train_images and not held_out & test_images
    assert val.task_classes == full.task_classes


def test_validation_images_get_the_evaluation_transform(tmp_path):
    data = write_tiny_cifar(tmp_path / "cifar")
    cfg = tiny_cifar_cfg(data, tmp_path / "out")
    cfg.defrost()
    cfg.DATA.VALIDATION = 0.25
    cfg.CONTINUAL.COLOR_JITTER = 0.4  # a random training transform would make two reads differ
    bench = build_benchmark(cfg)
    assert bench.train_sizes == [12, 12] and bench.test_sizes == [4, 4]
    ds = bench.scenario.test_stream[0].dataset
    assert all(bool((ds[i][0] == ds[i][0]).all()) for i in range(len(ds)))


@pytest.mark.parametrize("share", ["1.0", "-0.1"])
def test_validation_share_out_of_range_is_one_clear_error(share):
    with pytest.raises(CasdapError, match=r"DATA.VALIDATION must be in \[0, 1\)"):
        build_benchmark(load_config(DIGITS_YAML, ["DATA.VALIDATION", share]))


def test_continual_randaugment_at_full_magnitude_runs_with_current_pillow():
    """RandAugment's increasing posterize reaches 0 bits at magnitude 10, which Pillow >= 11 rejects;
    the continual path shares the supervised path's transforms, which keep it working."""
    import random

    from casdap.continual.benchmarks import _image_transforms

    cfg = load_config(CIFAR_YAML, ["CONTINUAL.AA", "rand-m10-n3-inc1", "DATA.CROPSIZE", "32"])
    train, _ = _image_transforms(cfg)
    img = Image.new("RGB", (32, 32), (200, 120, 30))
    random.seed(0)
    torch.manual_seed(0)
    outs = [train(img) for _ in range(300)]  # the old transform raised ValueError within these draws
    assert all(o.shape == (3, 32, 32) and torch.isfinite(o).all() for o in outs)
