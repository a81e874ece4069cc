"""Every flag of the official script, and each kind of bad input: one clear line, nothing lost."""

import hashlib
import json

import pytest
from train_helpers import write_image_folders, write_tiny_cifar

from casdap.cli import main as cli_main
from casdap.cli.train import get_args_parser, parse_args

# (flag, default) of the CAS-ViT classification main.py.
OFFICIAL = {
    "batch_size": 256, "epochs": 300, "update_freq": 2, "model": "rcvit_xs", "drop_path": 0.1, "input_size": 224,
    "layer_scale_init_value": 1e-6, "model_ema": False, "model_ema_decay": 0.9995, "model_ema_force_cpu": False,
    "model_ema_eval": False, "opt": "adamw", "opt_eps": 1e-8, "opt_betas": None, "clip_grad": None, "momentum": 0.9,
    "weight_decay": 0.05, "weight_decay_end": None, "lr": 6e-3, "layer_decay": 1.0, "min_lr": 1e-6,
    "warmup_epochs": 20, "warmup_steps": -1, "warmup_start_lr": 0, "color_jitter": 0.4,
    "aa": "rand-m9-mstd0.5-inc1", "smoothing": 0.1, "train_interpolation": "bicubic", "crop_pct": None,
    "reprob": 0.0, "remode": "pixel", "recount": 1, "resplit": False, "mixup": 0.0, "cutmix": 0.0,
    "cutmix_minmax": None, "mixup_prob": 0.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch",
    "eval_data_path": None, "nb_classes": 1000, "imagenet_default_mean_and_std": True, "data_set": "IMNET",
    "output_dir": "", "log_dir": None, "device": "cuda", "seed": 43, "resume": "", "finetune": "",
    "auto_resume": True, "save_ckpt": True, "save_ckpt_freq": 1, "save_ckpt_num": 3, "start_epoch": 0,
    "eval": False, "dist_eval": True, "disable_eval": False, "num_workers": 10, "pin_mem": True, "world_size": 1,
    "local_rank": -1, "dist_on_itp": False, "dist_url": "env://", "use_amp": True, "enable_wandb": False,
    "project": "edgenext", "wandb_ckpt": False, "multi_scale_sampler": False, "min_crop_size_w": 160,
    "max_crop_size_w": 320, "min_crop_size_h": 160, "max_crop_size_h": 320, "find_unused_params": False,
    "three_aug": False, "classifier_dropout": 0.0, "usi_eval": False,
}


def test_every_official_flag_with_its_default():
    defaults = vars(parse_args([]))
    for flag, value in OFFICIAL.items():
        assert flag in defaults and defaults[flag] == value, flag
    assert defaults["data_path"] is None  # ./data


def test_flag_spellings():
    a = parse_args(["--epoch", "30", "--model_ema", "True", "--use_amp", "false", "--pin_mem", "0",
                    "--local-rank=1", "--opt_betas", "0.9", "0.999", "--data_set", "CIFAR"])
    assert a.epochs == 30 and a.model_ema is True and a.use_amp is False and a.pin_mem is False
    assert a.local_rank == 1 and a.opt_betas == [0.9, 0.999]
    assert "--data_set" in get_args_parser().format_help()


def _one_line_error(capsys, argv, *needles):
    code = cli_main(["train", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("casdap: error:"), err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("argv, needles", [
    (["--foo", "1"], ["unrecognized arguments: --foo"]),
    (["--min_crop", "64"], ["ambiguous option: --min_crop", "--min_crop_size_w"]),
    (["--model_ema", "maybe"], ["expected True or False"]),
    (["--data_set", "MNIST"], ["invalid choice: 'MNIST'"]),
    (["--enable_wandb", "True"], ["--enable_wandb", "not supported"]),
    (["--layer_scale_init_value", "0.1"], ["no layer scale"]),
    (["--model_ema_eval", "True"], ["--model_ema True"]),
    (["--model", "rcvit_xxl"], ["unknown model 'rcvit_xxl'", "rcvit_xs"]),
    (["--config-file", "x.yaml"], ["continual-learning"]),
    (["--world_size", "2"], ["torch.distributed.run"]),
])
def test_bad_flags(capsys, argv, needles):
    _one_line_error(capsys, argv, *needles)


CIFAR_RUN = ["--data_set", "CIFAR", "--input_size", "32", "--batch_size", "8", "--update_freq", "1",
             "--num_workers", "0", "--print_verbose", "0", "--use_amp", "False", "--warmup_epochs", "0"]


def test_missing_data_shows_expected_layout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _one_line_error(capsys, CIFAR_RUN, "not found under 'data'", "cifar-100-python")
    _one_line_error(capsys, ["--data_path", str(tmp_path / "nowhere"), "--input_size", "32"],
                    "ImageNet training folder", "does not exist")


def test_malformed_cifar_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = write_tiny_cifar(tmp_path / "data", 16, 8, n_classes=100) / "cifar-100-python"
    (base / "train").write_bytes((base / "train").read_bytes()[:100])
    _one_line_error(capsys, CIFAR_RUN, "truncated or not a CIFAR pickle")


def test_batch_larger_than_data_set(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_tiny_cifar(tmp_path / "data", 16, 8, n_classes=100)
    _one_line_error(capsys, [*CIFAR_RUN, "--batch_size", "32"], "the training set has 16", "--batch_size")


def test_imagenet_flat_val_without_list_and_broken_image(tmp_path, capsys):
    root = write_image_folders(tmp_path / "imnet", n_per_class=2, n_classes=2, flat_val=True)
    (root / "val.txt").rename(root / "elsewhere.txt")
    argv = ["--data_path", str(root), "--input_size", "32", "--batch_size", "2", "--update_freq", "1",
            "--use_amp", "False", "--print_verbose", "0", "--num_workers", "1"]
    _one_line_error(capsys, argv, "no list file", "val.txt")
    (root / "elsewhere.txt").rename(root / "val.txt")
    broken = next((root / "train").rglob("*.png"))
    broken.write_bytes(broken.read_bytes()[:40])
    _one_line_error(capsys, argv, "cannot read image", broken.name)  # raised inside a DataLoader worker


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_tiny_cifar(tmp_path / "data", 16, 8, n_classes=100)
    run = [*CIFAR_RUN, "--output_dir", "out", "--lr", "1e-3"]
    assert cli_main(["train", *run, "--epochs", "1"]) == 0
    good = tmp_path / "out" / "checkpoint-0.pth"
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    capsys.readouterr()
    err = _one_line_error(capsys, [*run, "--epochs", "3", "--lr", "1e30", "--min_lr", "1e30"],
                          "loss is", "epoch 1", "checkpoint-0.pth")
    assert "nan" in err or "inf" in err
    assert hashlib.sha256(good.read_bytes()).hexdigest() == digest
    assert not (tmp_path / "out" / "checkpoint-1.pth").exists()
    assert [json.loads(line)["epoch"] for line in (tmp_path / "out" / "log.txt").read_text().splitlines()] == [0]
