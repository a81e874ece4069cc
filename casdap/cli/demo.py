"""``casdap demo``: a short real training of a CAS-ViT backbone on the embedded digits."""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small CAS-ViT on the embedded digits and report")
    p.add_argument("--model", default="rcvit_xs")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from casdap import create_model
    from casdap.data.digits import load_digits_tensors

    torch.manual_seed(args.seed)
    x, y = load_digits_tensors(32)
    x = (x - 0.5) / 0.25
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))
    n_train = int(0.75 * len(y))
    tr, te = perm[:n_train], perm[n_train:]
    model = create_model(args.model, num_classes=10, distillation=False)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    print(f"demo: {args.model} on scikit-learn digits (32x32), {len(tr)} train / {len(te)} test images")
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = tr[torch.randperm(len(tr))]
        total = 0.0
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            acc = (model(x[te]).argmax(1) == y[te]).float().mean().item()
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {total / len(tr):.3f}, test acc {acc:.3f}")
    elapsed = time.perf_counter() - start
    print(f"done in {elapsed:.1f} s ({args.epochs * len(tr) / elapsed:.0f} training images/s)")
    return 0
