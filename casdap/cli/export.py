"""``casdap export``: a trained backbone or CAS-DAP model to ONNX, checked with onnxruntime."""

from __future__ import annotations

import argparse

from casdap.errors import CasdapError

TOLERANCE = 1e-4


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a backbone or a CAS-DAP model to ONNX and check it with onnxruntime",
        description="Backbone (--model): writes the BatchNorm-folded graph; the class count and the "
        "distillation head are read from the checkpoint. CAS-DAP (--config, the run's DAP config): writes "
        "images -> (logits, key_idx) with per-image key selection inside the graph; the checkpoint holds the "
        "CAS-DAP state dict. The batch axis is dynamic. The graph then runs in onnxruntime beside the eager "
        "PyTorch model: logits must agree within 1e-4 (and key indices exactly); batch-1 latencies are printed.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="backbone name, e.g. rcvit_xs")
    what.add_argument("--config", help="CAS-DAP config file (as for the continual run)")
    p.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides for --config")
    p.add_argument("--checkpoint", required=True, help="trained weights (.pth)")
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


def build_dap_from_checkpoint(config: str, opts: list[str], path: str):
    """CAS-DAP as the config describes it, every weight (backbone included) from the checkpoint."""
    from casdap import load_checkpoint
    from casdap.config import load_config
    from casdap.models.dap import build_dap_model

    # The checkpoint carries the backbone too: building must not look for the pretrained file.
    cfg = load_config(config, [*opts, "MODEL.RANDOM_INIT", "True", "MODEL.WEIGHT_PATH", ""])
    import logging

    logger = logging.getLogger("casdap.models.dap")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the random-init warning is about weights replaced just below
    try:
        model = build_dap_model(cfg)
    finally:
        logger.setLevel(level)
    load_checkpoint(model, path)
    model.backbone.random_init = False
    return model.eval()


def run(args: argparse.Namespace) -> int:
    import torch

    from casdap.deploy import fold_batchnorm, optimize_dap_for_inference
    from casdap.export import DAPLogitsAndKeys, check_onnx, export_onnx, require_onnx

    require_onnx("onnx", "onnxscript", *(() if args.no_check else ("onnxruntime",)))
    if args.threads is not None:
        if args.threads < 1:
            raise CasdapError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.config:
        dap = build_dap_from_checkpoint(args.config, args.opts, args.checkpoint)
        model, graph = DAPLogitsAndKeys(dap), DAPLogitsAndKeys(dap)
        fast = DAPLogitsAndKeys(optimize_dap_for_inference(dap))
        what = f"CAS-DAP from {args.config} (per-image key selection)"
    else:
        model = build_from_checkpoint(args.model, args.checkpoint)
        graph, fast, what = fold_batchnorm(model), None, args.model
    out = export_onnx(graph, args.onnx, args.input_size, args.opset)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {what}, {args.input_size} px, dynamic batch)")
    if args.no_check:
        return 0
    check = check_onnx(out, model, args.input_size, fast=fast)
    print(check.summary(TOLERANCE))
    if not check.ok(TOLERANCE):
        raise CasdapError(
            f"'{out}' was written but its outputs differ from PyTorch (max |logit diff| {check.max_abs_diff:.2e}, "
            f"tolerance {TOLERANCE:g}; key indices identical: {check.same_keys}); do not deploy it"
        )
    return 0
