"""ImageNet-style folders, image_folder, the multi-scale sampler, AMP and EMA, and the README's
evaluation command, on tiny PNG data sets written in the real layouts."""

import json
import re

import pytest
from synthetic_weights import manifest_of, synthetic_state_dict
from train_helpers import write_image_folders

from casdap.checkpoint import save_checkpoint
from casdap.cli import seed_main
from casdap.cli.train import main, parse_args
from casdap.data.samplers import MultiScaleBatchSampler, scale_batch_pairs
from casdap.models import create_model


def test_multi_scale_batches_split_over_ranks():
    pairs = scale_batch_pairs(224, 224, 128, 160, 320, 160, 320)
    assert (224, 224, 128) in pairs and len({(h, w) for h, w, _ in pairs}) >= 4
    assert all(h % 32 == 0 and w % 32 == 0 and b >= 128 for h, w, b in pairs)
    assert dict(((h, w), b) for h, w, b in pairs)[(160, 160)] > 128  # smaller images, bigger batches
    ranks = [MultiScaleBatchSampler(100, [(32, 32, 4), (64, 64, 2)], seed=7, num_replicas=2, rank=r) for r in (0, 1)]
    batches = [list(s) for s in ranks]
    shapes = [[(b[0][0], b[0][1], len(b)) for b in r] for r in batches]
    assert shapes[0] == shapes[1] and len(batches[0]) == len(ranks[0])  # same steps on every rank
    assert {(h, w) for h, w, _ in shapes[0]} == {(32, 32), (64, 64)}
    for r in batches:
        assert all(len({(h, w) for h, w, _ in b}) == 1 for b in r)  # one resolution per batch
    seen = [[i for b in r for _, _, i in b][:50] for r in batches]
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(100))
    ranks[0].set_epoch(1)
    assert [i for b in ranks[0] for _, _, i in b][:50] != seen[0]


def test_imagenet_layout_flat_val_multiscale_amp_ema(tmp_path, capsys):
    root = write_image_folders(tmp_path / "imagenet", n_per_class=6, n_classes=3, flat_val=True)
    out = tmp_path / "out"
    result = main(parse_args([
        "--data_path", str(root), "--model", "rcvit_xs", "--input_size", "32", "--batch_size", "4",
        "--update_freq", "1", "--epochs", "2", "--lr", "1e-3", "--warmup_epochs", "1", "--num_workers", "0",
        "--multi_scale_sampler", "--min_crop_size_w", "32", "--max_crop_size_w", "64", "--min_crop_size_h", "32",
        "--max_crop_size_h", "64", "--use_amp", "True", "--model_ema", "True", "--model_ema_eval", "True",
        "--save_ckpt_num", "1", "--print_verbose", "1", "--output_dir", str(out),
    ]))
    text = capsys.readouterr().out
    logs = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in logs] == [0, 1]
    assert {"test_acc1", "test_acc5", "test_loss", "test_acc1_ema", "n_parameters"} <= set(logs[0])
    assert result.model.head.out_features == 3
    names = sorted(p.name for p in out.glob("checkpoint-*.pth"))
    assert "checkpoint-1.pth" in names and "checkpoint-0.pth" not in names  # --save_ckpt_num 1
    assert "checkpoint-best.pth" in names
    assert "multi-scale sampler" in text and re.search(r"Epoch: \[0\] \[1/\d+\] \((32|64), (32|64)\)", text)
    assert "images/s" in text.splitlines()[-1]


def test_image_folder_with_class_folder_eval_set(tmp_path):
    root = write_image_folders(tmp_path / "folder", n_per_class=4, n_classes=3, flat_val=False)
    result = main(parse_args([
        "--data_set", "image_folder", "--data_path", str(root / "train"), "--eval_data_path", str(root / "val"),
        "--nb_classes", "3", "--input_size", "32", "--batch_size", "4", "--epochs", "1", "--update_freq", "1",
        "--num_workers", "0", "--use_amp", "False", "--print_verbose", "0", "--three_aug",
    ]))
    assert len(result.log) == 1 and 0 <= result.log[0]["test_acc1"] <= 100


@pytest.mark.filterwarnings("ignore:This DataLoader will create 10 worker processes")
def test_readme_eval_command_on_imagenet_layout(tmp_path, monkeypatch, capsys):
    """`python main.py --model rcvit_m --eval True --resume <checkpoint> --input_size 384 --data_path <imagenet>`
    with a Model Zoo-layout checkpoint (1000 classes, distillation head)."""
    root = write_image_folders(tmp_path / "imagenet", n_per_class=1, n_classes=3, flat_val=True)
    sd = synthetic_state_dict(manifest_of(create_model("rcvit_m", num_classes=1000)), seed=0)
    save_checkpoint({"model": sd}, tmp_path / "rcvit_m.pth")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = seed_main(["--model", "rcvit_m", "--eval", "True", "--resume", str(tmp_path / "rcvit_m.pth"),
                      "--input_size", "384", "--data_path", str(root)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert re.fullmatch(r"\* Acc@1 \d+\.\d{3} Acc@5 \d+\.\d{3} loss \d+\.\d{3}\n", captured.out), captured.out
    assert "loaded" in captured.err  # progress goes to stderr, the result alone to stdout


def test_default_randaugment_posterize_works_with_current_pillow():
    from PIL import Image

    from casdap.data.datasets import build_train_transform
    from casdap.data.transforms import _posterize

    args = parse_args(["--input_size", "32"])
    ra = build_train_transform(args, 32).transforms[2]
    posterize_ops = [op for op in ra.ops if "Posterize" in op.name]
    assert posterize_ops and all(op.aug_fn is _posterize for op in posterize_ops)
    img = Image.new("RGB", (8, 8), (200, 120, 30))
    assert _posterize(img, 0).getpixel((0, 0)) == (0, 0, 0)
    assert _posterize(img, 4).getpixel((0, 0)) == (192, 112, 16)
