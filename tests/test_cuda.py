"""The CUDA paths: fp16 autocast with a gradient scaler, nccl, bf16 in the continual path, resume,
``casdap bench --device cuda`` (synchronised timings, allocator peak memory, ``torch.compile``) and
the export of CUDA-trained checkpoints.

Every test here carries the ``cuda`` marker and is skipped, with the reason, where
``torch.cuda.is_available()`` is False (CI, the development machines): ``pytest -m cuda`` on a GPU
machine runs them (``bash benchmarks/gpu.sh`` does, after an offline install). To check this file's
own logic on a machine without a GPU, ``CASDAP_CUDA_TESTS_ON_CPU=1 pytest -m cuda`` runs the same
tests on the CPU (gloo instead of nccl, bf16 instead of fp16, no ``torch.compile``); that proves
nothing about CUDA.

Tolerances (chosen before any GPU ran these tests; each test states which it uses):
- fp16 autocast vs fp32, the loss of one training step on the same weights and batch: relative 1e-2
  (fp16 keeps 11 significant bits). The mean loss of a short CUDA run (a few steps at a tiny lr,
  fp16 + scaler vs fp32): relative 3e-2.
- CUDA vs CPU continual DAP (TF32 off): every accuracy-matrix entry within two test images of the
  task (2/50), the final accuracy and the task-selection accuracy within 1/50; the trained weights
  (prompts, keys, head) within 1e-2 in relative L2 distance (Adam turns gradients that are rounding
  noise on both devices into full-size steps of either sign, so a per-weight bound would test the
  noise). bf16 vs fp32 on CUDA: every entry within three test images.
- Resume on CUDA vs the uninterrupted CUDA run (deterministic kernels): the matrix identical, the
  weights within 1e-4 in relative L2 distance (bitwise equal where every kernel is deterministic).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# cuBLAS needs this before it starts for deterministic results (the resume test asks for them).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402
from cl_support import interrupt_during_task, tiny_cifar_cfg  # noqa: E402
from cl_support import write_tiny_cifar as write_cl_cifar  # noqa: E402
from conftest import ROOT  # noqa: E402
from train_helpers import write_tiny_cifar as write_train_cifar  # noqa: E402

ON_CPU = os.environ.get("CASDAP_CUDA_TESTS_ON_CPU") == "1"
CUDA = torch.cuda.is_available() and not ON_CPU
DEVICE = "cuda" if CUDA else "cpu"

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not (CUDA or ON_CPU),
        reason="needs a CUDA GPU (torch.cuda.is_available() is False here); on a GPU machine run "
        "`pytest -m cuda`, or `bash benchmarks/gpu.sh WHEELS OUT`",
    ),
]

AMP_STEP_RTOL = 1e-2
AMP_RUN_RTOL = 3e-2
TEST_PER_CLASS = 25  # 2 classes per task: 50 test images per task
ONE_IMAGE = 1 / (2 * TEST_PER_CLASS)
CPU_WEIGHT_RTOL = 1e-2
RESUME_WEIGHT_RTOL = 1e-4

TRAIN_FLAGS = ("--data_set CIFAR10 --model rcvit_xs --lr 1e-4 --batch_size 16 --epochs 1 --input_size 32 "
               "--num_workers 0 --print_verbose 0 --warmup_epochs 0 --model_ema False --drop_path 0 --mixup 0 "
               "--cutmix 0 --reprob 0 --save_ckpt_num 1").split()


@pytest.fixture
def exact_fp32():
    """TF32 off (cuDNN convolutions use it by default), so CUDA and CPU compute the same function."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = saved


@pytest.fixture
def deterministic():
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1"}


# -------------------------------------------------------------------------------- supervised
def _train(cwd: Path, *flags: str):
    from casdap.cli.train import main, parse_args

    old = Path.cwd()
    os.chdir(cwd)
    try:
        return main(parse_args([*TRAIN_FLAGS, "--device", DEVICE, *flags]))
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def supervised_runs(tmp_path_factory):
    """The same short supervised run with --use_amp True and False (fp16 + scaler / fp32 on CUDA)."""
    cwd = tmp_path_factory.mktemp("supervised")
    write_train_cifar(cwd / "data", n_train=96, n_test=32, n_classes=10, variant="cifar10")
    amp = _train(cwd, "--use_amp", "True", "--output_dir", "amp")
    fp32 = _train(cwd, "--use_amp", "False", "--output_dir", "fp32")
    return cwd, amp, fp32


def test_fp16_autocast_step_loss_matches_fp32(exact_fp32):
    """One training step's loss under the trainer's autocast (fp16 on CUDA) vs fp32, same weights
    and batch: relative difference <= AMP_STEP_RTOL; then one scaled step leaves finite weights."""
    from casdap.engine.train_eval import _loss, autocast
    from casdap.models import create_model

    torch.manual_seed(0)
    dev = torch.device(DEVICE)
    model = create_model("rcvit_xs", num_classes=10).to(dev).train()
    x = torch.randn(16, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (16,), device=dev)
    crit = torch.nn.CrossEntropyLoss()
    with autocast(dev, True):
        out = model(x)
        loss16, _ = _loss(crit, out, y)
    assert (out[0] if isinstance(out, tuple) else out).dtype == (torch.float16 if CUDA else torch.bfloat16)
    loss32, _ = _loss(crit, model(x), y)
    assert abs(loss16.item() - loss32.item()) <= AMP_STEP_RTOL * abs(loss32.item())

    scaler = torch.amp.GradScaler(dev.type, enabled=CUDA)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler.scale(loss16).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if CUDA:
        assert 0 < scaler.get_scale() < float("inf")


def test_supervised_run_with_fp16_and_grad_scaler_matches_fp32(supervised_runs):
    """--use_amp True on CUDA (fp16 autocast + GradScaler) vs --use_amp False: mean training loss
    within AMP_RUN_RTOL; the checkpoint holds the scaler's state."""
    cwd, amp, fp32 = supervised_runs
    a, b = amp.log[0], fp32.log[0]
    assert abs(a["train_loss"] - b["train_loss"]) <= AMP_RUN_RTOL * abs(b["train_loss"])
    assert abs(a["test_loss"] - b["test_loss"]) <= AMP_RUN_RTOL * abs(b["test_loss"])
    state = torch.load(cwd / "amp" / "checkpoint-0.pth", map_location="cpu", weights_only=True)
    if CUDA:
        assert state["scaler"]["scale"] > 0 and next(amp.model.parameters()).is_cuda
    args = json.loads((cwd / "amp" / "args.json").read_text())
    assert args["device"].startswith(DEVICE)


def test_export_of_a_cuda_trained_supervised_checkpoint(supervised_runs, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="casdap export checks the graph with onnxruntime (export extra)")
    pytest.importorskip("onnxscript", reason="the torch.export-based ONNX exporter needs onnxscript (export extra)")
    from casdap.cli import main

    cwd, _, _ = supervised_runs
    code = main(["export", "--model", "rcvit_xs", "--checkpoint", str(cwd / "amp" / "checkpoint-0.pth"),
                 "--onnx", str(tmp_path / "xs.onnx"), "--input-size", "32"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(OK, tolerance" in out and (tmp_path / "xs.onnx").is_file()


# -------------------------------------------------------------------------------- nccl
LAUNCHER = '''
import os, sys
import torch, torch.distributed as dist
backend = sys.argv.pop(1)
rank = int(os.environ["LOCAL_RANK"])
if backend == "nccl":
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", rank))
else:
    dist.init_process_group("gloo")
print(f"process group: backend {dist.get_backend()}, world {dist.get_world_size()}", flush=True)
from casdap.cli import seed_main
code = seed_main(sys.argv[1:])
if dist.is_initialized():
    dist.destroy_process_group()
sys.exit(code)
'''


def _torchrun_one_process(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 1`` of main.py's entry, with a process group already joined
    (nccl on CUDA), so every collective of the run (loss check, metric reduction, RNG-state gather,
    key broadcast) goes through it."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", str(launcher),
           "nccl" if CUDA else "gloo", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)


def test_single_process_nccl_run_of_main_py(tmp_path):
    write_train_cifar(tmp_path / "data", n_train=64, n_test=16, n_classes=10, variant="cifar10")
    proc = _torchrun_one_process(tmp_path, *TRAIN_FLAGS, "--device", DEVICE, "--use_amp", "True",
                                 "--output_dir", "out")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"backend {'nccl' if CUDA else 'gloo'}, world 1" in proc.stdout
    log = [json.loads(line) for line in (tmp_path / "out" / "log.txt").read_text().splitlines()]
    assert len(log) == 1 and log[0]["train_loss"] > 0
    assert (tmp_path / "out" / "checkpoint-0.pth").is_file()  # after the RNG states were gathered


def test_single_process_nccl_run_of_casdap_cl(tmp_path):
    data = write_cl_cifar(tmp_path / "cifar")
    cfg = tmp_path / "run.yaml"
    # several keys per task: the seeded keys are broadcast over the process group
    cfg.write_text(tiny_cifar_cfg(data, tmp_path / "run", "dap", "DEVICE", DEVICE, "MODEL.DAP.KEYS_PER_TASK", "3",
                                  "USE_AMP", "True").dump())
    proc = _torchrun_one_process(tmp_path, "--config-file", str(cfg), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"backend {'nccl' if CUDA else 'gloo'}, world 1" in proc.stdout
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["finished"] and m["tasks_done"] == 2
    assert f"device {DEVICE}" in proc.stdout


# -------------------------------------------------------------------------------- continual
@pytest.fixture(scope="module")
def cl_data(tmp_path_factory):
    return write_cl_cifar(tmp_path_factory.mktemp("cl") / "cifar", n_classes=4, train_per_class=24,
                          test_per_class=TEST_PER_CLASS)


def _dap(data: Path, out: Path, device: str, *extra: str):
    from casdap.continual.runner import run_continual

    return run_continual(tiny_cifar_cfg(data, out, "dap", "DEVICE", device, *extra), progress=False)


def _trainable(result) -> dict[str, torch.Tensor]:
    model = result.strategy.model
    names = {id(p) for p in model.trainable_parameters()}
    return {n: p.detach().float().cpu() for n, p in model.named_parameters() if id(p) in names}


def _relative_l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all the tensors together."""
    diff = sum(((a[k].float() - b[k].float()) ** 2).sum().item() for k in b)
    return (diff / max(sum((b[k].float() ** 2).sum().item() for k in b), 1e-30)) ** 0.5


def _close_matrices(a, b, atol: float) -> bool:
    return all((x is None) == (y is None) and (x is None or abs(x - y) <= atol + 1e-9)
               for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def test_continual_dap_on_cuda_matches_the_cpu_run(cl_data, tmp_path, exact_fp32):
    """Same seed, data and settings: each accuracy-matrix entry within two test images of its task,
    the final accuracy within one, the trained weights within CPU_WEIGHT_RTOL (relative L2)."""
    gpu = _dap(cl_data, tmp_path / "gpu", DEVICE)
    cpu = _dap(cl_data, tmp_path / "cpu", "cpu")
    if CUDA:
        assert next(gpu.strategy.model.parameters()).is_cuda
    a, b = gpu.metrics["acc_matrix"], cpu.metrics["acc_matrix"]
    assert _close_matrices(a, b, 2 * ONE_IMAGE), (a, b)
    assert abs(gpu.metrics["final_acc"] - cpu.metrics["final_acc"]) <= ONE_IMAGE + 1e-9
    assert abs(gpu.metrics["task_selection_acc"] - cpu.metrics["task_selection_acc"]) <= ONE_IMAGE + 1e-9
    distance = _relative_l2(_trainable(gpu), _trainable(cpu))
    assert distance <= CPU_WEIGHT_RTOL, distance


def test_continual_dap_bf16_on_cuda(cl_data, tmp_path, monkeypatch):
    """USE_AMP True: the forward passes run in bf16 on the GPU (AutocastPlugin), the loss in fp32,
    and the matrix stays within three test images of the fp32 run."""
    from casdap.continual.dap_strategy import DAPStrategy

    dtypes = set()
    original = DAPStrategy.forward

    def spy(self):
        out = original(self)
        dtypes.add(self.mb_dap.logits.dtype)
        return out

    monkeypatch.setattr(DAPStrategy, "forward", spy)
    bf16 = _dap(cl_data, tmp_path / "bf16", DEVICE, "USE_AMP", "True")
    monkeypatch.setattr(DAPStrategy, "forward", original)
    fp32 = _dap(cl_data, tmp_path / "fp32", DEVICE)
    assert dtypes == {torch.bfloat16}
    a, b = bf16.metrics["acc_matrix"], fp32.metrics["acc_matrix"]
    assert _close_matrices(a, b, 3 * ONE_IMAGE), (a, b)


def test_resume_on_cuda_gives_the_uninterrupted_matrix(cl_data, tmp_path, monkeypatch, deterministic):

    extra = ("MODEL.DAP.KEYS_PER_TASK", "3")  # keys seeded from the CUDA generator: its state must resume
    full = _dap(cl_data, tmp_path / "full", DEVICE, *extra)
    killed = tmp_path / "killed"
    with monkeypatch.context() as mp:
        interrupt_during_task(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            _dap(cl_data, killed, DEVICE, *extra)
    assert json.loads((killed / "metrics.json").read_text())["tasks_done"] == 1
    resumed = _dap(cl_data, killed, DEVICE, *extra, "SOLVER.AUTO_RESUME", "True")
    assert resumed.metrics["acc_matrix"] == full.metrics["acc_matrix"]
    assert resumed.metrics["finished"] and resumed.metrics["tasks_done"] == 2
    a = torch.load(tmp_path / "full" / "checkpoints" / "task_001.pth", map_location="cpu", weights_only=True)
    b = torch.load(killed / "checkpoints" / "task_001.pth", map_location="cpu", weights_only=True)
    trained = [k for k in a["model"] if not k.startswith("backbone.")]  # the frozen backbone would dilute it
    distance = _relative_l2({k: b["model"][k] for k in trained}, {k: a["model"][k] for k in trained})
    assert distance <= RESUME_WEIGHT_RTOL, distance
    if CUDA:
        assert "cuda" in b["rng"]


def test_export_of_a_cuda_trained_dap_checkpoint(cl_data, tmp_path, capsys):
    """The run's own checkpoint (written from GPU tensors) exports, and the export module agrees with
    the run's evaluation path before anything is written."""
    pytest.importorskip("onnxruntime", reason="casdap export checks the graph with onnxruntime (export extra)")
    pytest.importorskip("onnxscript", reason="the torch.export-based ONNX exporter needs onnxscript (export extra)")
    from casdap.cli import main

    run = _dap(cl_data, tmp_path / "run", DEVICE).output_dir
    code = main(["export", "--config", str(run / "config.yaml"), "--checkpoint",
                 str(run / "checkpoints" / "task_001.pth"), "--onnx", str(tmp_path / "dap.onnx")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert (tmp_path / "dap.onnx").is_file() and "(OK, tolerance" in out


# -------------------------------------------------------------------------------- bench
def test_bench_on_cuda_synchronises_and_reads_the_allocator_peak(tmp_path, monkeypatch):
    """``casdap bench --device cuda``: every timed sample is bracketed by device synchronisation,
    peak memory comes from the caching allocator's counters (reset before each measured call), and
    the folded/fused/compiled variants (``torch.compile`` on CUDA) give the eager logits."""
    from casdap.cli import main

    calls = {"sync": 0, "reset": 0, "peak": 0}
    if CUDA:
        for name, key in (("synchronize", "sync"), ("reset_peak_memory_stats", "reset"),
                          ("max_memory_allocated", "peak")):
            real = getattr(torch.cuda, name)

            def counted(*a, _real=real, _key=key, **kw):
                calls[_key] += 1
                return _real(*a, **kw)

            monkeypatch.setattr(torch.cuda, name, counted)
    paths = "eager,folded_cl,fused_cl" + (",compiled" if CUDA else "")
    out = tmp_path / "bench.json"
    code = main(["bench", "--device", DEVICE, "--models", "rcvit_xs", "--sizes", "32", "--batch", "8",
                 "--repeats", "2", "--warmup", "1", "--min-time", "0.05", "--modes", "train,infer",
                 "--paths", paths, "--train-paths", "eager,cl", "--dap", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    rows = {(r["mode"], r["variant"]): r for r in result["results"]}
    assert {("train", "eager"), ("train", "cl"), ("train", "casdap"), ("infer", "eager"),
            ("infer", "casdap_fast")} <= set(rows)
    assert all(r["images_per_s"]["min"] > 0 for r in rows.values())
    assert {p["variant"] for p in result["parity"]} >= set(paths.split(",")) - {"eager"}
    if CUDA:
        assert result["machine"]["gpu"] == torch.cuda.get_device_name()
        assert all(r["peak_memory_mb"] is not None and r["peak_memory_mb"] > 0 for r in rows.values())
        assert rows["train", "eager"]["peak_memory_mb"] > rows["infer", "eager"]["peak_memory_mb"]
        timed = sum(len(r["images_per_s"]["samples"]) for r in rows.values())
        assert calls["sync"] >= 2 * timed  # before and after every timed sample
        assert calls["reset"] >= len(rows) and calls["peak"] >= len(rows)
