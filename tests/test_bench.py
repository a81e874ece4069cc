import json
import textwrap

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import casdap
from casdap.bench import count_flops, load_reference
from casdap.cli import main
from casdap.models.casvit import CASViT

TINY = ["--models", "rcvit_xs", "--sizes", "32", "--batch", "2", "--repeats", "2", "--warmup", "1",
        "--min-time", "0.01", "--threads", "1"]


@pytest.fixture
def reference_file(tmp_path):
    """A stand-in for a downloaded model file: registers its builder with timm the way the official
    rcvit.py does, and builds the same layout."""
    path = tmp_path / "reference_rcvit.py"
    path.write_text(textwrap.dedent("""
        from timm.models.registry import register_model
        from casdap.models.casvit import CASViT, VARIANTS

        class RCViT(CASViT):
            pass

        @register_model
        def rcvit_xs(**kwargs):
            return RCViT(*VARIANTS["rcvit_xs"], **kwargs)
    """))
    return path


def test_bench_cli_writes_json_with_every_measurement(tmp_path, reference_file, capsys):
    out_json = tmp_path / "bench.json"
    code = main(["bench", *TINY, "--reference", str(reference_file), "--json", str(out_json)])
    printed = capsys.readouterr().out
    assert code == 0
    result = json.loads(out_json.read_text())
    assert result["matmul_gflop_per_s"]["median"] > 0 and result["machine"]["torch_threads"] == 1
    rows = {(r["mode"], r["variant"]): r for r in result["results"]}
    fast_paths = ("eager", "folded", "folded_cl", "fused_cl", "reference")
    assert set(rows) == {("train", "eager"), ("train", "reference")} | {
        (mode, p) for mode in ("infer", "latency") for p in fast_paths}
    # FLOPs per image agree with an independent count of the eval forward pass
    model = casdap.create_model("rcvit_xs").eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    for r in result["results"]:
        ips = r["images_per_s"]
        assert len(ips["samples"]) == 2 and ips["min"] <= ips["median"] <= ips["max"] and ips["min"] > 0
        assert r["batch"] == (1 if r["mode"] == "latency" else 2)
        assert r["fraction_of_matmul"] == pytest.approx(r["gflop_per_s"] / result["matmul_gflop_per_s"]["median"])
        if r["mode"] != "train":
            assert r["gflop_per_image"] * 1e9 == pytest.approx(fc.get_total_flops())
    # forward + backward (input and weight gradients): about three forward passes
    assert 2.5 < rows["train", "eager"]["gflop_per_image"] / rows["infer", "eager"]["gflop_per_image"] < 3.5
    assert rows["infer", "eager"]["peak_memory_mb"] > 0
    kinds = {(r["mode"], r["variant"], r["against"]) for r in result["ratios"]}
    assert ("infer", "folded_cl", "eager") in kinds and ("train", "eager", "reference") in kinds
    parity = {p["variant"]: p["max_abs_diff"] for p in result["parity"]}
    assert set(parity) == set(fast_paths) and max(parity.values()) < 1e-4
    assert "| rcvit_xs | 32 | infer | folded_cl |" in printed
    # loading the reference did not replace this package's timm entry of the same name
    assert type(timm.create_model("rcvit_xs")) is CASViT


def test_bench_mixed_precision_paths(tmp_path, reference_file):
    """bf16 autocast (channels-last) for training and inference, for this package's model and the
    reference: timed, parity checked against the eager fp32 logits relative to their scale, and
    compared with the eager path and with the reference in the same form."""
    out_json = tmp_path / "bench.json"
    code = main(["bench", *TINY, "--modes", "train,infer", "--paths", "eager,amp_bf16", "--train-paths",
                 "eager,amp_bf16", "--reference", str(reference_file), "--reference-paths", "eager,amp_bf16",
                 "--no-memory", "--json", str(out_json)])
    assert code == 0
    result = json.loads(out_json.read_text())
    rows = {(r["mode"], r["variant"]) for r in result["results"]}
    paths = ("eager", "amp_bf16", "reference", "reference_amp_bf16")
    assert rows == {(m, p) for m in ("train", "infer") for p in paths}
    parity = {p["variant"]: p["max_abs_diff"] for p in result["parity"]}
    # bf16 keeps 8 significant bits (unit roundoff u = 2^-8); autocast rounds the operands of every
    # convolution and matrix product to it and accumulates in fp32, so each layer adds a relative error
    # of order u to its activations, and the normalisations keep those errors from compounding over the
    # depth: the logits stay within a few u of their scale (1.9 u measured here). 8 u leaves a factor 4
    # and still catches a path off by a few percent. At least the fp32 paths' tolerance: bf16 really ran.
    from casdap.bench.config import PARITY_TOLERANCE, BenchConfig
    from casdap.bench.models import build_model

    cfg = BenchConfig(models=("rcvit_xs",), sizes=(32,), batch=2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(cfg.seed))  # the bench's timed batch
    with torch.inference_mode():
        scale = build_model(cfg, "rcvit_xs", torch.device("cpu")).eval()(x).abs().max().item()
    assert PARITY_TOLERANCE < parity["amp_bf16"] <= 8 * 2**-8 * scale, (parity, scale)
    # the reference here is this package's model under another name, with the same weights: the same
    # arithmetic in both precisions
    assert parity["reference"] == 0.0 and parity["reference_amp_bf16"] == parity["amp_bf16"]
    kinds = {(r["mode"], r["variant"], r["against"]) for r in result["ratios"]}
    for mode in ("train", "infer"):
        assert {(mode, "amp_bf16", "eager"), (mode, "amp_bf16", "reference_amp_bf16"),
                (mode, "eager", "reference")} <= kinds
    assert not any(r["variant"].startswith("reference") for r in result["ratios"])


def test_reference_paths_need_a_reference(tmp_path, capsys):
    assert main(["bench", *TINY, "--reference-paths", "eager,amp_bf16", "--json", str(tmp_path / "b.json")]) != 0
    assert "--reference-paths needs --reference" in capsys.readouterr().err
    assert main(["bench", *TINY, "--reference-paths", "folded", "--json", str(tmp_path / "b.json")]) != 0
    assert "unknown reference path(s) folded" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_reference_with_missing_dependency_is_one_clear_error(tmp_path):
    path = tmp_path / "needs_einops.py"
    path.write_text("import casdap_missing_dependency_xyz\n")
    donor = casdap.create_model("rcvit_xs")
    with pytest.raises(casdap.CasdapError, match="imports 'casdap_missing_dependency_xyz'.*pip install"):
        load_reference(path, "rcvit_xs", donor)


def test_reference_with_a_different_layout_is_refused(tmp_path):
    path = tmp_path / "other.py"
    path.write_text("import torch.nn as nn\n\ndef rcvit_xs(num_classes=1000, distillation=True):\n"
                    "    return nn.Linear(3, num_classes)\n")
    with pytest.raises(casdap.CasdapError, match="different parameter layout"):
        load_reference(path, "rcvit_xs", casdap.create_model("rcvit_xs"))


def test_bench_cli_rejects_bad_flags(tmp_path, capsys):
    assert main(["bench", "--models", "rcvit_xxl", "--json", str(tmp_path / "b.json")]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["bench", *TINY, "--device", "tpu", "--json", str(tmp_path / "b.json")]) == 2
    assert "--device" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_bench_times_casdap_against_its_backbone(tmp_path):
    out_json = tmp_path / "dap.json"
    assert main(["bench", *TINY, "--dap", "--modes", "latency", "--paths", "eager,fused_cl", "--no-memory",
                 "--json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    rows = {r["variant"]: r for r in result["results"]}
    assert set(rows) == {"eager", "fused_cl", "casdap", "casdap_fast"}
    # the query pass shares the stages before the first prompted stage: less than twice the work
    assert 1.0 < rows["casdap"]["gflop_per_image"] / rows["eager"]["gflop_per_image"] < 2.0
    kinds = {r["kind"] for r in result["ratios"]}
    assert {"casdap_vs_backbone", "casdap_fast_vs_backbone", "casdap_fast_vs_fast_backbone"} <= kinds
    fast = next(p for p in result["parity"] if p["variant"] == "casdap_fast")
    assert fast["same_keys"] and fast["max_abs_diff"] < 1e-4


def test_flop_count_of_depthwise_backward_respects_groups():
    conv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    forward = count_flops(lambda: conv(x))
    assert forward == 2 * 2 * 32 * 8 * 8 * 9
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward  # + input grad + weight grad


def test_bench_package_and_help_import_no_torch():
    """``casdap bench --help`` is built from casdap.bench.config; the harness loads on first use."""
    import subprocess
    import sys

    code = ("import sys, casdap.bench\nfrom casdap.cli import main\ntry:\n    main(['bench', '--help'])\n"
            "except SystemExit:\n    pass\nsys.exit(3 if 'torch' in sys.modules else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "amp_bf16" in proc.stdout, proc.stderr[-2000:]
