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
        "distillation head are read from the checkpoint. CAS-DAP (--config, the run's config, e.g. "
        "RUN/config.yaml): writes images -> (logits, key_idx) with per-image key selection inside the graph, at the "
        "run's DATA.CROPSIZE, and, when the run had MODEL.DAP.RESTRICT_TO_TASK, with the logits of classes outside "
        "the selected key's task set to -1e4 inside the graph (the classes of each task come from the checkpoint "
        "the run wrote, RUN/checkpoints/task_XXX.pth, or from CONTINUAL.* when classes were not shuffled). Its "
        "predictions are first compared with the run's own evaluation path. The batch axis is dynamic. The graph "
        "then runs in onnxruntime beside the eager PyTorch model: logits must agree within 1e-4 (and key indices "
        "exactly); batch-1 latencies are printed.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="backbone name, e.g. rcvit_xs")
    what.add_argument("--config", help="CAS-DAP config file (as for the continual run)")
    p.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides for --config")
    p.add_argument("--checkpoint", required=True, help="trained weights (.pth)")
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--input-size", type=int, default=None,
                   help="image side in pixels (default: the run's DATA.CROPSIZE with --config, else 224)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--threads", type=int, default=None, help="threads for the latency comparison")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity and latency check")
    p.set_defaults(func=run)


def _input_size(args: argparse.Namespace, cfg) -> int:
    if cfg is None:
        return 224 if args.input_size is None else args.input_size
    run_size = int(cfg.DATA.CROPSIZE)
    if args.input_size is None:
        return run_size
    if args.input_size != run_size:
        print(f"note: exporting at --input-size {args.input_size} px, the run used DATA.CROPSIZE {run_size} px")
    return args.input_size


def run(args: argparse.Namespace) -> int:

    from casdap.deploy import fold_batchnorm, optimize_dap_for_inference
    from casdap.export import (
        DAPLogitsAndKeys,
        build_dap_from_checkpoint,
        build_from_checkpoint,
        check_against_run,
        check_onnx,
        dap_config,
        export_onnx,
        keep_mask,
        require_onnx,
        run_class_splits,
    )

    require_onnx("onnx", "onnxscript", *(() if args.no_check else ("onnxruntime",)))
    if args.threads is not None and args.threads < 1:
        raise CasdapError("--threads must be >= 1")
    from casdap.engine.threads import set_threads

    set_threads("casdap export", 32 if args.input_size is None else int(args.input_size), requested=args.threads)
    cfg = dap_config(args.config, args.opts) if args.config else None
    size = _input_size(args, cfg)
    if cfg is not None and str(cfg.MODEL.DAP.PREDICTION or "").lower() in ("all", "soft"):
        raise CasdapError(f"casdap export builds the restricted or plain-head graph; MODEL.DAP.PREDICTION "
                          f"{cfg.MODEL.DAP.PREDICTION} is not exported (pass MODEL.DAP.PREDICTION restrict "
                          "MODEL.DAP.RESTRICT_TO_TASK True in --opts)")
    if cfg is not None:
        from casdap.checkpoint import read_checkpoint

        dap = build_dap_from_checkpoint(args.config, args.opts, args.checkpoint, cfg=cfg)
        splits = keep = None
        restriction = "all logits (MODEL.DAP.RESTRICT_TO_TASK False)"
        if cfg.MODEL.DAP.RESTRICT_TO_TASK:
            splits, source = run_class_splits(read_checkpoint(args.checkpoint), cfg, dap.num_tasks, args.checkpoint)
            keep = keep_mask(splits, dap.num_classes)
            restriction = (f"logits restricted to the selected key's task (MODEL.DAP.RESTRICT_TO_TASK; "
                           f"{sum(map(bool, splits))} tasks with classes, from {source})")
        if cfg.MODEL.DAP.SELECTION != "per_image":
            print(f"note: the run evaluated with {cfg.MODEL.DAP.SELECTION} key selection; the graph selects the key "
                  "per image (a deployed model has no batch task or true task)")
        model, graph = DAPLogitsAndKeys(dap, keep), DAPLogitsAndKeys(dap, keep)
        fast = DAPLogitsAndKeys(optimize_dap_for_inference(dap), keep)
        what = (f"CAS-DAP from {args.config} (per-image key selection, "
                f"{'restricted' if keep is not None else 'unrestricted'} logits)")
        print(f"exporting CAS-DAP at {size} px; {restriction}")
        parity = check_against_run(model, splits, size)
        print(parity.summary(TOLERANCE))
        if not parity.ok(TOLERANCE):
            raise CasdapError(
                f"the export module's predictions differ from the run's evaluation (max |logit diff| "
                f"{parity.max_abs_diff:.2e}; key indices identical: {parity.same_keys}); nothing written"
            )
    else:
        model = build_from_checkpoint(args.model, args.checkpoint)
        graph, fast, what = fold_batchnorm(model), None, args.model
    out = export_onnx(graph, args.onnx, size, args.opset)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {what}, {size} px, dynamic batch)")
    if args.no_check:
        return 0
    check = check_onnx(out, model, size, fast=fast)
    print(check.summary(TOLERANCE))
    if not check.ok(TOLERANCE):
        raise CasdapError(
            f"'{out}' was written but its outputs differ from PyTorch (max |logit diff| {check.max_abs_diff:.2e}, "
            f"tolerance {TOLERANCE:g}; key indices identical: {check.same_keys}); do not deploy it"
        )
    return 0
