"""Small proxy comparison of the prompt injections (no pretrained weights, no data download).

scikit-learn's digits at 32 px: an rcvit_xs is first trained on digits 0-4 (its "pretraining"),
then frozen, and the new classes 5-9 are learnt with CAS-DAP (one task, forced key) by each
injection, against a frozen-backbone linear probe (CAS-DAP with its gates held at zero, i.e. the
prompts switched off). Reports held-out accuracy on 5-9 per seed and its mean.

    python benchmarks/dap_injection_proxy.py --seeds 0 1 --epochs 8
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import casdap
from casdap.models.dap import CASDAP


def _digits(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    return ((x - 0.5) / 0.5).contiguous(), torch.tensor(d.target)


def _split(x, y, classes, seed):
    keep = torch.isin(y, torch.tensor(classes))
    x, y = x[keep], y[keep] - min(classes)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = len(y) // 5
    return (x[perm[n_test:]], y[perm[n_test:]]), (x[perm[:n_test]], y[perm[:n_test]])


def _batches(x, y, batch, seed):
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(y), batch):
        yield x[perm[i:i + batch]], y[perm[i:i + batch]]


def pretrain(train, epochs: int, seed: int) -> casdap.models.CASViT:
    torch.manual_seed(seed)
    model = casdap.create_model("rcvit_xs", num_classes=5, distillation=False)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    model.train()
    for epoch in range(epochs):
        for xb, yb in _batches(*train, 64, seed * 100 + epoch):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def fit_dap(backbone_state, train, test, injection: str, stages, epochs: int, seed: int, prompts_on: bool):
    torch.manual_seed(seed)
    backbone = casdap.create_model("rcvit_xs", num_classes=0, distillation=False)
    backbone.load_state_dict({k: v for k, v in backbone_state.items() if not k.startswith("head.")})
    model = CASDAP(backbone, num_classes=5, num_tasks=1, num_tokens=10, task_emb_dim=16, stages=stages,
                   injection=injection, keys_per_task=1)
    if not prompts_on:
        model.freeze_token_axis()  # gates stay at zero: exactly a linear probe on frozen features
    opt = torch.optim.Adam(model.trainable_parameters(), lr=0.01, betas=(0.9, 0.9))  # DAP's solver defaults
    model.train()
    for epoch in range(epochs):
        for xb, yb in _batches(*train, 32, seed * 100 + epoch):
            out = model(xb, task_id=0)
            loss = F.cross_entropy(out.logits, yb) - 0.1 * out.pull
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 1.0)
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xb).logits.argmax(1) for xb, _ in _batches(*test, 128, 0)])
        labels = torch.cat([yb for _, yb in _batches(*test, 128, 0)])
    return (pred == labels).float().mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--max-images", type=int, default=None,
                        help="use at most this many training and test images per split (a quick check of the script)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    x, y = _digits()
    variants = [
        ("linear probe (prompts off)", "kv", (2, 3), False),
        ("kv, stages [2,3]", "kv", (2, 3), True),
        ("pool, stages [2,3]", "pool", (2, 3), True),
        ("kv, stages [3]", "kv", (3,), True),
        ("kv, stages [1,2,3]", "kv", (1, 2, 3), True),
    ]
    results: dict[str, list[float]] = {name: [] for name, *_ in variants}
    for seed in args.seeds:
        old_train, old_test = _split(x, y, [0, 1, 2, 3, 4], seed)
        new_train, new_test = _split(x, y, [5, 6, 7, 8, 9], seed)
        if args.max_images:
            old_train, old_test, new_train, new_test = (
                tuple(t[: args.max_images] for t in split) for split in (old_train, old_test, new_train, new_test))
        t = time.time()
        backbone = pretrain(old_train, args.pretrain_epochs, seed)
        with torch.no_grad():
            old_acc = (backbone(old_test[0]).argmax(1) == old_test[1]).float().mean().item()
        print(f"seed {seed}: backbone on digits 0-4, held-out acc {old_acc:.3f} ({time.time() - t:.0f}s)", flush=True)
        state = backbone.state_dict()
        for name, injection, stages, on in variants:
            t = time.time()
            acc = fit_dap(state, new_train, new_test, injection, stages, args.epochs, seed, on)
            results[name].append(acc)
            print(f"seed {seed}: {name:28s} digits 5-9 held-out acc {acc:.3f} ({time.time() - t:.0f}s)", flush=True)
    for name, accs in results.items():
        print(f"mean over seeds {args.seeds}: {name:28s} {sum(accs) / len(accs):.3f}")


if __name__ == "__main__":
    main()
