"""``casdap export``: a trained backbone to ONNX, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import argparse

from casdap.errors import CasdapError

TOLERANCE = 1e-4


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a backbone to ONNX and check it with onnxruntime",
        description="Writes the BatchNorm-folded inference graph (dynamic batch axis), then runs it in "
        "onnxruntime beside the PyTorch model: logits must agree within 1e-4; batch-1 latency of both "
        "is printed. The class count and distillation head are read from the checkpoint.",
    )
    p.add_argument("--model", required=True, help="backbone name, e.g. rcvit_xs")
    p.add_argument("--checkpoint", required=True, help="trained weights (.pth, official or casdap layout)")
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--input-size", type=int, default=224, help="image side in pixels (default 224)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--threads", type=int, default=None, help="threads for the latency comparison")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity and latency check")
    p.set_defaults(func=run)


def build_from_checkpoint(name: str, path: str):
    """The backbone with the head shape and distillation head that the checkpoint holds."""
    from casdap import create_model, load_checkpoint
    from casdap.checkpoint import extract_state_dict, read_checkpoint

    sd, _ = extract_state_dict(read_checkpoint(path), path=path)
    head = sd.get("head.weight")
    num_classes = int(head.shape[0]) if head is not None else 0
    model = create_model(name, num_classes=num_classes, distillation="dist_head.weight" in sd)
    load_checkpoint(model, path)
    return model.eval()


def run(args: argparse.Namespace) -> int:
    import torch

    from casdap.deploy import fold_batchnorm
    from casdap.export import check_onnx, export_onnx, require_onnx

    require_onnx("onnx", "onnxscript", *(() if args.no_check else ("onnxruntime",)))
    if args.threads is not None:
        if args.threads < 1:
            raise CasdapError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    model = build_from_checkpoint(args.model, args.checkpoint)
    out = export_onnx(fold_batchnorm(model), args.onnx, args.input_size, args.opset)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.model}, {args.input_size} px, dynamic batch)")
    if args.no_check:
        return 0
    check = check_onnx(out, model, args.input_size)
    print(check.summary(TOLERANCE))
    if check.max_abs_diff > TOLERANCE:
        raise CasdapError(
            f"'{out}' was written but its outputs differ from PyTorch by {check.max_abs_diff:.2e} "
            f"(> {TOLERANCE:g}); do not deploy it"
        )
    return 0
