"""``casdap pretrain``: pretrain a CAS-ViT backbone offline on a synthetic source (no digits)."""

from __future__ import annotations

import argparse
import json


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    from casdap.pretrain.protocol import DEFAULT_PROTOCOL, SOURCE_NAMES

    p = sub.add_parser(
        "pretrain",
        help="pretrain a backbone offline on rendered glyphs / fractals (the embedded default's weights)",
        description="Train a CAS-ViT backbone as a classifier of a synthetic source that needs no download "
        "and contains no digit, and save it as MODEL_ROOT/<model>.pth (official layout) with a .json "
        "sidecar describing exactly what it saw.",
    )
    p.add_argument("--model", default="rcvit_xs", help="backbone name (default: rcvit_xs)")
    p.add_argument("--out", default=None,
                   help="checkpoint path (default: model/embedded/<model>.pth, where digits.yaml looks)")
    p.add_argument("--source", default=DEFAULT_PROTOCOL["source"], choices=sorted(SOURCE_NAMES),
                   help=f"pretraining images (default: {DEFAULT_PROTOCOL['source']})")
    p.add_argument("--epochs", type=_positive_int, default=DEFAULT_PROTOCOL["epochs"],
                   help=f"epochs, each of fresh images (default: {DEFAULT_PROTOCOL['epochs']})")
    p.add_argument("--images-per-class", type=_positive_int, default=DEFAULT_PROTOCOL["images_per_class"],
                   help=f"images per class per epoch (default: {DEFAULT_PROTOCOL['images_per_class']})")
    p.add_argument("--batch-size", type=_positive_int, default=DEFAULT_PROTOCOL["batch_size"])
    p.add_argument("--lr", type=float, default=DEFAULT_PROTOCOL["lr"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="torch CPU threads (default: 1; small 32x32 batches gain little from more, and on a busy "
                   "machine OpenMP threads waiting on each other made 2 threads many times slower than 1)")
    p.add_argument("--evaluate", action="store_true",
                   help="afterwards, report frozen-feature quality on the digits (NCM and task proxy)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from casdap.errors import CasdapError
    from casdap.pretrain.train import pretrain_backbone, sidecar_path

    out = Path(args.out) if args.out else Path("model") / "embedded" / f"{args.model}.pth"
    if out.suffix != ".pth":
        raise CasdapError(f"--out '{out}' should end in .pth (the sidecar is written beside it as .json)")
    from casdap.engine.threads import set_threads

    set_threads("casdap pretrain", 32, requested=args.threads)
    side = pretrain_backbone(args.model, out, epochs=args.epochs, seed=args.seed, source=args.source,
                             images_per_class=args.images_per_class, batch_size=args.batch_size, lr=args.lr,
                             progress=not args.quiet)
    last = side["log"][-1]
    seen = side["what_the_backbone_saw"]
    print(f"pretrain: {args.model} on {seen['source']} ({seen['num_classes']} classes, {side['images_seen']} "
          f"images, {args.epochs} epochs) in {side['wall_time_s']:.1f} s; final train loss {last['train_loss']:.3f}, "
          f"train acc {last['train_acc']:.3f}")
    print(f"saved {out} and {sidecar_path(out)}")
    if args.evaluate:
        from casdap import create_model, load_checkpoint
        from casdap.pretrain.evaluate import digits_feature_quality

        model = create_model(args.model, num_classes=10, distillation=False)
        load_checkpoint(model, out, finetune=True)
        print("digits (frozen pooled features): " + json.dumps(
            {k: round(v, 4) for k, v in digits_feature_quality(model).items()}))
    return 0
