"""Do the prompts change anything? A fast within-task probe of CAS-DAP on ``embedded_shift``.

Trains CAS-DAP on the first ``--tasks`` tasks with the true task given (the within-task question
alone, no key selection), on 80% of each class's training renders, and scores the other 20% (the
test renders are never read). Adam with a constant rate, DAP's loss, the token-axis map, channel
map and gates frozen after the first task as in a run. Prints one JSON line: held-out accuracy of
every task after the last one, the mean absolute gate and token-map weights per prompted block,
and how far the prompts move the pooled features (``|f_prompted - f_frozen| / |f_frozen|``).
``--finetune-stages`` instead trains those backbone stages with a linear head on the first task:
what adapting the features could reach (the room the prompts have).

    python benchmarks/prompt_probe.py --tasks 4 --epochs 10 MODEL.DAP.NUM_DAP_TOKENS 0
    python benchmarks/prompt_probe.py --tasks 4 --epochs 10 MODEL.DAP.INJECTION attn MODEL.DAP.CHANNEL_MIX True
    python benchmarks/prompt_probe.py --finetune-stages 2 3 --epochs 10 --lr 0.001
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from casdap.config import load_config, resolve_reference_defaults, shipped_config
from casdap.continual.benchmarks import VALIDATION_SEED_OFFSET, _embedded_shift, _seeded_split
from casdap.models.build import build_backbone, build_dap_model
from casdap.models.dap import restrict_logits

CLASSES_PER_TASK = 10


def _batches(idx: torch.Tensor, g: torch.Generator, size: int = 64):
    perm = idx[torch.randperm(len(idx), generator=g)]
    return [perm[b:b + size] for b in range(0, len(perm), size)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-freeze", action="store_true", help="keep training token maps and gates after task 1")
    ap.add_argument("--finetune-stages", type=int, nargs="*", default=None)
    ap.add_argument("--prompt-lr-scale", type=float, default=1.0,
                    help="learning rate of the prompt side (generators, gates, task embeddings) over --lr")
    ap.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides on embedded_shift.yaml")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(shipped_config("embedded_shift"), ["SEED", str(a.seed), *a.opts])
    resolve_reference_defaults(cfg)
    torch.manual_seed(a.seed)
    train, _, _ = _embedded_shift(cfg, a.seed)
    x, y = train.source, torch.tensor(train.targets)
    fit, held = _seeded_split(y.tolist(), 0.2, a.seed + VALIDATION_SEED_OFFSET)
    fit, held = torch.tensor(fit), torch.tensor(held)
    task_of = y // CLASSES_PER_TASK
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    res: dict = {"opts": a.opts, "epochs": a.epochs, "lr": a.lr, "prompt_lr_scale": a.prompt_lr_scale, "seed": a.seed}

    if a.finetune_stages is not None:
        bb = build_backbone(cfg, num_classes=0).eval().requires_grad_(False)
        for s in a.finetune_stages:
            bb.stages[s].requires_grad_(True)
        head = torch.nn.Linear(bb.num_features, CLASSES_PER_TASK)
        opt = torch.optim.Adam([p for p in bb.parameters() if p.requires_grad] + list(head.parameters()), lr=a.lr)
        idx, vi = fit[task_of[fit] == 0], held[task_of[held] == 0]
        for _ in range(a.epochs):
            for bi in _batches(idx, g):
                loss = F.cross_entropy(head(bb.forward_pooled(x[bi])), y[bi])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            res["finetune_stages"] = a.finetune_stages
            res["task0"] = round(100 * (head(bb.forward_pooled(x[vi])).argmax(1) == y[vi]).float().mean().item(), 1)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(res))
        return

    model = build_dap_model(cfg)
    splits = [list(range(CLASSES_PER_TASK * t, CLASSES_PER_TASK * (t + 1))) for t in range(cfg.CONTINUAL.N_TASKS)]
    for t in range(a.tasks):
        if t >= 1 and not a.no_freeze:
            model.freeze_token_axis()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
        params = [p for _, p in named]
        head_side = ("head.", "dap_task_predictor.")
        groups = [
            {"params": [p for n, p in named if n.startswith(head_side)], "lr": a.lr},
            {"params": [p for n, p in named if not n.startswith(head_side)], "lr": a.lr * a.prompt_lr_scale},
        ]
        opt = torch.optim.Adam(groups, lr=a.lr, betas=(cfg.SOLVER.BETA1, cfg.SOLVER.BETA2))
        seen = [s if k <= t else [] for k, s in enumerate(splits)]
        model.train()
        for _ in range(a.epochs):
            for bi in _batches(fit[task_of[fit] == t], g):
                tid = torch.full((len(bi),), t)
                out = model(x[bi], task_id=tid)
                loss = (cfg.MODEL.DAP.CURRENT_LAMBDA * F.cross_entropy(restrict_logits(out.logits, tid, seen), y[bi])
                        - cfg.MODEL.DAP.SIM_LAMBDA * out.pull)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.SOLVER.GRAD_CLIP)
                opt.step()
        model.eval()
        with torch.no_grad():
            accs = []
            for k in range(t + 1):
                vi = held[task_of[held] == k]
                tid = torch.full((len(vi),), k)
                pred = restrict_logits(model(x[vi], task_id=tid).logits, tid, seen).argmax(1)
                accs.append(round(100 * (pred == y[vi]).float().mean().item(), 1))
        res[f"after_task{t}"] = accs
    res["mean"] = round(sum(accs) / len(accs), 1)
    res["gates_and_token_map"] = {
        f"stage{s}.block{i}": [round(float(p.abs().mean()), 4) for p in b.structure_parameters() if p.dim() > 1
                               or p.shape[0] > 1][:4]
        for s, blocks in model.dap_blocks.items() for i, b in enumerate(blocks)
    }
    with torch.no_grad():
        vi = held[task_of[held] == 0]
        f0 = model.forward_query(x[vi])
        f1 = model.forward_prompted(x[vi], torch.zeros(len(vi), dtype=torch.long))
        res["rel_feature_change"] = round(float(((f1 - f0).norm(dim=1) / f0.norm(dim=1)).mean()), 4)
        # Would a query from prompted features find the task more often? Nearest class mean (of the
        # training images) over the classes of the tasks trained, features from the frozen backbone
        # against features prompted with the first task's embedding.
        tr = fit[task_of[fit] < a.tasks]
        ev = held[task_of[held] < a.tasks]
        task_id = {}
        def prompted_task0(z: torch.Tensor) -> torch.Tensor:
            return model.forward_prompted(z, torch.zeros(len(z), dtype=torch.long))

        for name, feats in (("frozen", model.forward_query), ("prompted_task0", prompted_task0)):
            ftr, fev = F.normalize(feats(x[tr]), dim=1), F.normalize(feats(x[ev]), dim=1)
            classes = y[tr].unique()
            means = F.normalize(torch.stack([ftr[y[tr] == c].mean(0) for c in classes]), dim=1)
            nearest = classes[(fev @ means.t()).argmax(1)]
            task_id[name] = round(100 * (nearest // CLASSES_PER_TASK == task_of[ev]).float().mean().item(), 1)
        res["task_id_nearest_class_mean"] = task_id
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
