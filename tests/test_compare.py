"""``casdap compare`` on every input kind, written here in the layouts their writers use."""

import csv
import json
import shlex
import statistics

import numpy as np
import pytest
import yaml
from conftest import ROOT
from PIL import Image
from yacs.config import CfgNode

from casdap import compare
from casdap.cli import main

T = 5


def make_matrix(diag: float, drop: float, n: int = T, wobble: float = 0.0, digits: int = 4) -> list[list[float | None]]:
    """After task i, task j <= i scores ``diag - drop * (i - j)`` (floored at 0); None for unseen."""
    def acc(i, j):
        return round(max(0.0, diag - drop * (i - j) + wobble * ((i + j) % 3 - 1)), digits)

    return [[acc(i, j) if j <= i else None for j in range(n)] for i in range(n)]


def write_cl_run(root, name, method="dap", seed=0, matrix=None, n_tasks=T, finished=True, lr=0.01, **extra):
    """A continual-learning run directory as the runner writes it (metrics.json, acc_matrix.csv, config.yaml,
    final_results.txt, per-task checkpoints)."""
    run = root / name
    run.mkdir(parents=True)
    matrix = matrix if matrix is not None else make_matrix(0.95, 0.02, n_tasks)
    cfg = {"MODEL": {"TRANSFER_TYPE": method, "BACKBONE": "rcvit_xs"}, "SOLVER": {"BASE_LR": lr, "AUTO_RESUME": False},
           "CONTINUAL": {"N_TASKS": n_tasks}, "SEED": seed, "OUTPUT_DIR": str(run)}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    full = [row for row in matrix if row is not None]
    metrics = {
        "method": method, "backbone": "rcvit_xs", "dataset": "digits", "seed": seed, "n_tasks": n_tasks,
        "tasks_done": len(full), "finished": finished, "acc_matrix": full,
        "final_acc": statistics.fmean(full[-1]) if finished else None,
        "forgetting": None, "learning_acc": None, "bwt": None,
        "task_selection_acc": 0.8 if method == "dap" else None, "mixed_stream_acc": 0.7,
        "selection": "per_image", "random_init_backbone": False, "wall_time_s": 30.0 + seed,
        "trainable_params": 12_000, "total_params": 3_000_000, "train_images_per_s": 400.0 + seed,
    }
    metrics.update(extra)
    (run / "metrics.json").write_text(json.dumps(metrics))
    lines = ["after_task," + ",".join(f"task_{j}" for j in range(n_tasks))]
    lines += [f"{i}," + ",".join("" if v is None else f"{v:.4f}" for v in row) for i, row in enumerate(full)]
    (run / "acc_matrix.csv").write_text("\n".join(lines) + "\n")
    (run / "checkpoints").mkdir()
    for i in range(len(full)):
        (run / "checkpoints" / f"task_{i}.pth").write_bytes(b"\0")
    return run


def write_supervised_run(root, name, accs=(40.0, 61.5, 72.25), epochs=None, model="rcvit_xs"):
    run = root / name
    run.mkdir(parents=True)
    lines = [
        json.dumps({"train_lr": 1e-3, "train_loss": 2.0 - e, "test_loss": 1.5 - e / 2, "test_acc1": acc,
                    "test_acc5": min(100.0, acc + 20), "epoch": e, "n_parameters": 3_203_008,
                    "epoch_time_s": 10.0 + e, "train_images_per_s": 100.0 * (e + 1)})
        for e, acc in enumerate(accs)
    ]
    (run / "log.txt").write_text("\n".join(lines) + "\n")
    args = {"model": model, "data_set": "CIFAR", "epochs": len(accs) if epochs is None else epochs, "seed": 0,
            "lr": 6e-3, "output_dir": str(run)}
    (run / "args.json").write_text(json.dumps(args))
    (run / "checkpoint-best.pth").write_bytes(b"\0")
    (run / f"checkpoint-{len(accs) - 1}.pth").write_bytes(b"\0")
    return run


def write_dap_results(folder, matrix, seed=42, dataset="cifar100"):
    """final_results.txt the way the DAP reference trainer writes it: the printed fvcore/yacs config,
    a blank print, the numpy print of LOG['acc'] indexed [evaluated task, training step] with zeros
    for unseen tasks, then the three 'Final test ...' lines with five decimals."""
    n = len(matrix)
    log = np.zeros((n, n))
    for i, row in enumerate(matrix):
        for j in range(i + 1):
            log[j, i] = row[j]
    final = np.round(np.mean(log[:, n - 1]), 5)
    forget = np.round(np.mean((np.max(log, 1) - log[:, n - 1])[:-1]), 5)
    la = np.round(np.mean(np.diag(log)), 5)
    cfg = CfgNode({
        "CONTINUAL": {"INITIAL": 10, "INCREMENT": 10, "N_TASKS": n, "COLOR_JITTER": None},
        "DATA": {"NAME": dataset, "DATAPATH": "", "FEATURE": "sup_vitb16_imagenet21k", "NUMBER_CLASSES": 10 * n},
        "MODEL": {"TRANSFER_TYPE": "dap", "TYPE": "vit", "LINEAR": {"MLP_SIZES": [[1, 2]], "DROPOUT": 0.1},
                  "DAP": {"SIM_LAMBDA": 0.1, "NUM_DAP_TOKENS": 10, "TASK_EMB": 16, "INIT": None}},
        "SOLVER": {"OPTIMIZER": "adam", "BASE_LR": 0.01, "TOTAL_EPOCH": 5, "GRAD_CLIP_APPLY": True},
        "SEED": seed, "OUTPUT_DIR": f"./results/seed{seed}/{dataset}",
    })
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "final_results.txt"
    with open(path, "w") as f:
        print(cfg, file=f)
        print("\n", file=f)
        print(log, file=f)
        print("\nFinal {} Accuracy: {:.5f}".format("test", final), file=f)
        print("\nFinal {} Forget: {:.5f}".format("test", forget), file=f)
        print("\nFinal {} LA: {:.5f}".format("test", la), file=f)
    return path, float(final), float(forget), float(la)


def test_dap_reference_file_is_read_in_its_own_orientation(tmp_path):
    # Ten tasks with five-decimal values: numpy wraps every row of the printed matrix over two lines.
    matrix = make_matrix(0.98765, 0.01234, n=10, wobble=0.00321, digits=5)
    path, final, forget, la = write_dap_results(tmp_path / "seed42" / "cifar100", matrix)
    assert "\n  " in path.read_text().split("[[", 1)[1]  # the wrapped rows really are there

    for given in (path, path.parent, tmp_path / "seed42"):  # file, its folder, DAP's OUTPUT_DIR
        r = compare.load_run(given)
        assert r.kind == "dap_reference" and r.method == "dap" and r.n_tasks == 10
        assert r.dataset == "cifar100" and r.seed == 42 and r.backbone == "vit (sup_vitb16_imagenet21k)"
        assert r.final_acc == final and r.forgetting == forget and r.learning_acc == la
        for i in range(10):
            for j in range(10):
                assert r.acc_matrix[i][j] == (None if j > i else pytest.approx(matrix[i][j], abs=1e-5))
        assert r.config["MODEL.DAP.NUM_DAP_TOKENS"] == 10 and r.config["DATA.DATAPATH"] == ""
        assert r.selection == "batch_majority" and "batch-majority" in r.label
        # BWT is not in DAP's file: derived from the matrix
        assert r.bwt == pytest.approx(statistics.fmean(matrix[9][j] - matrix[j][j] for j in range(9)), abs=1e-5)


def test_continual_run_metrics_and_labels(tmp_path):
    matrix = [[0.9, None, None], [0.5, 0.8, None], [0.25, 0.5, 0.75]]
    run = write_cl_run(tmp_path, "lin", method="linear", matrix=matrix, n_tasks=3, selection="batch_majority",
                       random_init_backbone=True, bwt=-0.123)
    r = compare.load_run(run)
    assert r.final_acc == pytest.approx(0.5)
    assert r.forgetting == pytest.approx(((0.9 - 0.25) + (0.8 - 0.5)) / 2)  # derived: null in metrics.json
    assert r.learning_acc == pytest.approx((0.9 + 0.8 + 0.75) / 3)
    assert r.bwt == -0.123  # the writer's own value wins when present
    assert r.avg_acc_curve() == pytest.approx([0.9, 0.65, 0.5])
    assert r.forgetting_per_task() == pytest.approx([0.65, 0.3])
    assert r.label == "linear [batch-majority, random-init backbone]"
    assert compare.load_run(run / "metrics.json").final_acc == r.final_acc

    # acc_matrix.csv alone is enough when metrics.json has no matrix
    m = json.loads((run / "metrics.json").read_text())
    del m["acc_matrix"]
    (run / "metrics.json").write_text(json.dumps(m))
    assert compare.load_run(run).acc_matrix == matrix


def test_supervised_run_is_the_joint_reference(tmp_path):
    r = compare.load_run(write_supervised_run(tmp_path, "sup"))
    assert r.kind == "supervised" and r.final_acc == pytest.approx(0.7225)
    assert r.backbone == "rcvit_xs" and r.dataset == "CIFAR" and r.seed == 0
    assert r.trainable_params == r.total_params == 3_203_008
    assert r.wall_time_s == pytest.approx(33.0) and r.train_images_per_s == pytest.approx(200.0)
    assert r.acc_matrix is None and "joint reference" in r.label


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: (d / "x").mkdir(), "not a run directory"),
        (lambda d: write_cl_run(d, "x", matrix=make_matrix(0.9, 0.1)[:2], finished=False),
         "unfinished run (2 of 5 tasks done, stopped during task 3)"),
        (lambda d: write_cl_run(d, "x").joinpath("metrics.json").write_text('{"method": "dap", "n_tasks": 5,'),
         "malformed JSON (line 1"),
        (lambda d: write_cl_run(d, "x", matrix=[[0.9, None], [0.8, 0.7]]), "mismatched task counts"),
        (lambda d: write_cl_run(d, "x", matrix=[[95.0] + [None] * 4] + make_matrix(0.9, 0.1)[1:]),
         "fractions, not percent"),
        (lambda d: (d / "x").mkdir() or (d / "x" / "config.yaml").write_text("SEED: 0\n"), "half-written"),
        (lambda d: write_supervised_run(d, "x", epochs=300), "unfinished run (3 of 300 epochs"),
        (lambda d: write_supervised_run(d, "x").joinpath("log.txt").write_text('{"epoch": 0}\n{"test_acc1": 5'),
         "line 2 is malformed JSON"),
        (lambda d: write_supervised_run(d, "x").joinpath("log.txt").unlink(), "no log.txt"),
        (lambda d: (d / "x").mkdir() or (d / "x" / "final_results.txt").write_text("SEED: 1\n[[0.5]]\n"),
         "no 'Final test Accuracy' line"),
    ],
)
def test_bad_inputs_get_one_clear_message(tmp_path, make, reason):
    make(tmp_path)
    with pytest.raises(compare.RunError, match=None) as e:
        compare.load_run(tmp_path / "x")
    assert reason in str(e.value) and str(tmp_path / "x") in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_compares_every_kind_and_writes_tables_and_plots(tmp_path, capsys):
    runs = tmp_path / "runs"
    dap = [write_cl_run(runs, f"dap_s{s}", "dap", s, make_matrix(0.95, 0.01 * (s + 1))) for s in range(3)]
    ft = [write_cl_run(runs, f"ft_s{s}", "finetune", s, make_matrix(0.98, 0.2 + 0.05 * s)) for s in range(2)]
    lin = write_cl_run(runs, "linear_bm", "linear", 0, make_matrix(0.9, 0.05), selection="batch_majority",
                       random_init_backbone=True)
    lr2 = write_cl_run(runs, "dap_lr", "dap", 0, make_matrix(0.9, 0.02), lr=0.05)
    sup = write_supervised_run(runs, "supervised")
    joint = write_cl_run(runs, "joint", "joint", 0, [[0.97, 0.95, 0.96, 0.98, 0.94]])
    ref, ref_final, _, _ = write_dap_results(runs / "dapref" / "digits", make_matrix(0.97, 0.015))
    bad = {
        "notarun": (runs / "notarun", "not a run directory"),
        "half": (write_cl_run(runs, "half", matrix=make_matrix(0.9, 0.1)[:3], finished=False), "unfinished run"),
        "ten": (write_cl_run(runs, "ten", n_tasks=10), "mismatched task counts: 10 tasks while the other runs have 5"),
        "broken": (write_cl_run(runs, "broken"), "malformed JSON"),
        "missing": (runs / "missing", "does not exist"),
    }
    (runs / "notarun").mkdir()
    (runs / "broken" / "metrics.json").write_text("{not json")
    out = tmp_path / "cmp"
    given = [*dap, *ft, lin, lr2, sup, joint, ref, *(p for p, _ in bad.values())]
    assert main(["compare", *map(str, given), "--out", str(out)]) == 0

    captured = capsys.readouterr()
    err_lines = [line for line in captured.err.splitlines() if line]
    assert len(err_lines) == len(bad)
    for path, reason in bad.values():
        [line] = [line for line in err_lines if str(path) in line]
        assert line.startswith("casdap compare: skipped ") and reason in line
    table = captured.out
    assert "linear [batch-majority, random-init backbone]" in table
    assert "supervised [joint reference]" in table and "72.25" in table
    assert "dap [DAP code, batch-majority]" in table
    assert "Grouped over seeds (mean ± sample std)" in table

    # CSV: one row per run, one per method+configuration with mean and sample std over seeds
    runs_rows = list(csv.DictReader((out / "runs.csv").open()))
    assert [r["run"] for r in runs_rows] == ["dap_s0", "dap_s1", "dap_s2", "ft_s0", "ft_s1", "linear_bm", "dap_lr",
                                             "supervised", "joint", "digits"]
    assert float(runs_rows[-1]["final_acc"]) == ref_final
    assert float(runs_rows[-2]["final_acc"]) == pytest.approx(0.96) and runs_rows[-2]["forgetting"] == ""
    groups = {g["group"]: g for g in csv.DictReader((out / "summary.csv").open())}
    assert set(groups) == {"dap (SOLVER.BASE_LR=0.01)", "dap (SOLVER.BASE_LR=0.05)", "finetune",
                           "linear [batch-majority, random-init backbone]", "supervised [joint reference]",
                           "dap [DAP code, batch-majority]", "joint"}
    g = groups["dap (SOLVER.BASE_LR=0.01)"]
    finals = [statistics.fmean(make_matrix(0.95, 0.01 * (s + 1))[-1]) for s in range(3)]
    assert g["n_seeds"] == "3" and g["seeds"] == "0 1 2"
    assert float(g["final_acc_mean"]) == pytest.approx(statistics.fmean(finals))
    assert float(g["final_acc_std"]) == pytest.approx(statistics.stdev(finals))
    assert float(g["task_selection_acc_mean"]) == pytest.approx(0.8)
    assert groups["finetune"]["n_seeds"] == "2" and groups["supervised [joint reference]"]["final_acc_std"] == ""

    md = (out / "summary.md").read_text()
    mean, std = 100 * statistics.fmean(finals), 100 * statistics.stdev(finals)
    assert f"| dap (SOLVER.BASE_LR=0.01) | rcvit_xs | digits | 5 | 3 (0,1,2) | {mean:.2f} ± {std:.2f} |" in md
    assert "## Not compared" in md and "malformed JSON" in md

    # PNGs: real images of the declared pixel size with something drawn on them
    curve = (int(compare.CURVE_SIZE[0] * compare.PLOT_DPI), int(compare.CURVE_SIZE[1] * compare.PLOT_DPI))
    heat = (int(compare.HEATMAP_SIZE[0] * compare.PLOT_DPI), int(compare.HEATMAP_SIZE[1] * compare.PLOT_DPI))
    expected = {"avg_accuracy.png": curve, "avg_accuracy_seeds.png": curve, "forgetting_per_task.png": curve}
    expected.update({f"heatmaps/{r['run']}.png": heat for r in runs_rows if r["run"] not in ("supervised", "joint")})
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == sorted(expected)
    for name, size in expected.items():
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size == size
            colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
            assert colours is None or len(colours) > 50, name


def test_nothing_comparable_fails(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["compare", str(tmp_path / "empty"), str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code != 0
    assert "skipped" in err and "casdap: error: nothing to compare: none of the 2 given runs could be read" in err
    assert not (tmp_path / "o").exists()


def test_only_supervised_runs_give_tables_without_plots(tmp_path, capsys):
    runs = [write_supervised_run(tmp_path, f"s{m}", model=m) for m in ("rcvit_xs", "rcvit_s")]
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "o")]) == 0
    assert "plots" not in capsys.readouterr().out
    assert not list((tmp_path / "o").rglob("*.png"))
    rows = list(csv.DictReader((tmp_path / "o" / "summary.csv").open()))
    assert [r["backbone"] for r in rows] == ["rcvit_xs", "rcvit_s"]


def test_readme_command_runs(tmp_path, monkeypatch, capsys):
    """The command line of the README's 'Comparing runs' section, on runs laid out as it names them."""
    section = (ROOT / "README.md").read_text().split("## Comparing runs", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:2] == ["casdap", "compare"]
    for seed in range(3):
        write_cl_run(tmp_path / "runs", f"dap_s{seed}", "dap", seed, make_matrix(0.9, 0.01 * (seed + 1), 10), 10)
        write_cl_run(tmp_path / "runs", f"finetune_s{seed}", "finetune", seed, make_matrix(0.9, 0.1, 10), 10)
    write_supervised_run(tmp_path / "runs", "supervised")
    write_dap_results(tmp_path / "dap-cl" / "results" / "seed42" / "cifar100", make_matrix(0.95, 0.01, 10))
    monkeypatch.chdir(tmp_path)
    assert main(argv[1:]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "[batch-majority] prompt key voted over each single-task test batch" in captured.out
    out = tmp_path / argv[argv.index("--out") + 1]
    assert len(list(csv.DictReader((out / "runs.csv").open()))) == len(argv) - 4
    assert "- [joint reference] supervised training on all classes" in (out / "summary.md").read_text()
    assert (out / "avg_accuracy_seeds.png").is_file() and len(list((out / "heatmaps").glob("*.png"))) == 7


def test_runs_in_folders_of_the_same_name_get_distinct_names(tmp_path, capsys):
    results = [write_dap_results(tmp_path / f"seed{s}" / "cifar100", make_matrix(0.95, 0.01 * s, 10), seed=s)[0]
               for s in (42, 43)]
    comp = compare.load_runs([*results, results[0].parent])
    assert [r.name for r in comp.runs] == ["seed42/cifar100", "seed43/cifar100"]
    assert comp.skipped == [(str(results[0].parent), f"{results[0].parent}: given twice; compared once")]
    [group] = comp.groups  # two seeds of the same DAP configuration
    assert group.stats("final_acc")[1] is not None and [r.seed for r in group.runs] == [42, 43]


def test_a_seed_run_twice_counts_once_with_a_notice_naming_both_folders(tmp_path, capsys):
    a = write_cl_run(tmp_path, "a", seed=0, matrix=make_matrix(0.95, 0.02))
    b = write_cl_run(tmp_path, "b", seed=1, matrix=make_matrix(0.90, 0.02))
    copy = write_cl_run(tmp_path, "copy", seed=0, matrix=make_matrix(0.95, 0.02))  # the same run, copied
    rerun = write_cl_run(tmp_path, "rerun", seed=1, matrix=make_matrix(0.80, 0.02))  # seed 1 again, other result
    other_lr = write_cl_run(tmp_path, "other_lr", seed=0, lr=0.02)  # another configuration: its own seed 0
    comp = compare.load_runs([a, b, copy, rerun, other_lr])
    assert [r.path for r in comp.runs] == [a, b, other_lr]
    assert comp.skipped == [
        (str(copy), f"{copy}: seed 0 of dap again ({a} holds it, final accuracy the same); a seed counts once, "
                    "so it is left out"),
        (str(rerun), f"{rerun}: seed 1 of dap again ({b} holds it, final accuracy 76.00% vs 86.00%); a seed counts "
                     "once, so it is left out"),
    ]
    two, one = comp.groups
    assert [r.seed for r in two.runs] == [0, 1] and [r.path for r in one.runs] == [other_lr]
    finals = [statistics.fmean(make_matrix(d, 0.02)[-1]) for d in (0.95, 0.90)]
    assert two.stats("final_acc") == pytest.approx((statistics.fmean(finals), statistics.stdev(finals)))
    # the command says so and counts two seeds
    assert main(["compare", str(a), str(b), str(copy), "--out", str(tmp_path / "cmp")]) == 0
    err = capsys.readouterr().err
    assert f"casdap compare: skipped {copy}: seed 0 of dap again ({a} holds it" in err
    assert len(list(csv.DictReader(open(tmp_path / "cmp" / "runs.csv")))) == 2


def test_a_folder_of_seed_runs_is_read_as_those_continual_runs(tmp_path):
    """`casdap compare OUT/ROW` (a folder of seed folders, as the demo and the benchmark scripts lay
    them out) compares the continual runs inside; each seed also holds a final_results.txt, which
    must not make the folder read as DAP's output."""
    for seed in (0, 1):
        write_cl_run(tmp_path / "dap", f"seed{seed}", method="dap", seed=seed)
        write_cl_run(tmp_path / "slda", f"seed{seed}", method="slda", seed=seed)
        (tmp_path / "dap" / f"seed{seed}" / "final_results.txt").write_text("SEED: 0\n[[0.5]]\n")
    comp = compare.load_runs([tmp_path / "dap", tmp_path / "slda"])
    assert [(r.kind, r.method, r.seed) for r in comp.runs] == [
        ("continual", "dap", 0), ("continual", "dap", 1), ("continual", "slda", 0), ("continual", "slda", 1)]
    diffs = compare.paired.paired_differences(comp.groups, reference="slda")
    assert diffs and all(d.seeds == [0, 1] for d in diffs)
