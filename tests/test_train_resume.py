"""Exact resume, --eval output, --finetune: in-process runs on tiny CIFAR data in the real layout."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from synthetic_weights import manifest_of, synthetic_state_dict
from train_helpers import write_tiny_cifar

from casdap.checkpoint import save_checkpoint
from casdap.cli import main as cli_main
from casdap.cli.train import main, parse_args
from casdap.models import create_model

# Every source of randomness that must survive a restart: RandAugment, random erasing, mixup and
# cutmix, drop path, EMA, DataLoader worker seeding, plus the lr warmup/cosine and wd schedules.
FLAGS = ("--data_set CIFAR10 --model rcvit_xs --lr 2e-3 --batch_size 8 --update_freq 2 --epochs 3 --input_size 32 "
         "--num_workers 1 --warmup_epochs 1 --print_verbose 0 --use_amp False --mixup 0.8 --cutmix 1.0 "
         "--mixup_prob 0.5 --reprob 0.25 --model_ema True --model_ema_eval True --save_ckpt_num 5 "
         "--weight_decay_end 0.1 --layer_decay 0.9 --clip_grad 5.0").split()
VOLATILE = ("epoch_time_s", "train_images_per_s")




def _log(path):
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
            for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("resume")
    write_tiny_cifar(cwd / "data", n_train=32, n_test=12, n_classes=10, variant="cifar10")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        result = main(parse_args([*FLAGS, "--output_dir", "full"]))
    return cwd, result


def test_killed_after_epoch_resumes_to_identical_weights_and_metrics(uninterrupted, monkeypatch):
    cwd, full = uninterrupted
    monkeypatch.chdir(cwd)
    # The state a kill right after epoch 0 leaves behind: only checkpoint-0 was written.
    (cwd / "killed").mkdir()
    shutil.copy(cwd / "full" / "checkpoint-0.pth", cwd / "killed" / "checkpoint-0.pth")
    torch.manual_seed(12345)  # the new process starts with different generator states
    np.random.seed(12345)
    resumed = main(parse_args([*FLAGS, "--output_dir", "killed"]))  # --auto_resume True by default

    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full_log = _log(cwd / "full" / "log.txt")
    assert _log(cwd / "killed" / "log.txt") == full_log[1:]
    assert "train_grad_norm" in full_log[0] and full_log[2]["train_weight_decay"] > full_log[0]["train_weight_decay"]
    ema_a = torch.load(cwd / "full" / "checkpoint-2.pth", weights_only=True)["model_ema"]
    ema_b = torch.load(cwd / "killed" / "checkpoint-2.pth", weights_only=True)["model_ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_eval_prints_one_cas_vit_line_matching_the_training_log(uninterrupted, monkeypatch, capsys):
    cwd, _ = uninterrupted
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = cli_main(["train", *FLAGS, "--eval", "True", "--resume", "full/checkpoint-2.pth"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 1, out
    m = re.fullmatch(r"\* Acc@1 (\d+\.\d{3}) Acc@5 (\d+\.\d{3}) loss (\d+\.\d{3})", lines[0])
    assert m, lines[0]
    last = json.loads((cwd / "full" / "log.txt").read_text().splitlines()[-1])
    assert m.group(1) == f"{last['test_acc1']:.3f}" and m.group(3) == f"{last['test_loss']:.3f}"


def test_finetune_loads_backbone_and_drops_other_heads(uninterrupted, monkeypatch, capsys):
    cwd, _ = uninterrupted
    monkeypatch.chdir(cwd)
    # A Model Zoo-style file: 1000 classes, with the distillation head, under "model".
    zoo = create_model("rcvit_xs", num_classes=1000)
    sd = synthetic_state_dict(manifest_of(zoo), seed=3)
    save_checkpoint({"model": sd}, cwd / "zoo.pth")
    result = main(parse_args([*FLAGS, "--finetune", "zoo.pth", "--epochs", "1", "--lr", "0", "--min_lr", "0",
                              "--warmup_start_lr", "0", "--model_ema", "False", "--model_ema_eval", "False",
                              "--output_dir", "ft"]))
    got = result.model.state_dict()
    assert got["head.weight"].shape == (10, 220) and "dist_head.weight" not in got
    for k in ("patch_embed.0.weight", "network.2.1.attn.qkv.weight", "network.6.1.mlp.fc2.weight"):
        assert torch.equal(got[k], sd[k]), k  # lr 0: the loaded backbone is unchanged
    assert "dropped 4 tensors" in capsys.readouterr().out
