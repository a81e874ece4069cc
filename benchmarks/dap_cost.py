"""Cost of CAS-DAP (or another prompt method) against its plain backbone: parameters and eval forward time.

    python benchmarks/dap_cost.py --config configs/dap/cifar.yaml --sizes 32 224 --opts MODEL.DAP.STAGES [3]
    python benchmarks/dap_cost.py --config configs/dap/l2p_embedded_shift.yaml   (any prompt method's config)
    python benchmarks/dap_cost.py --config configs/dap/embedded_shift.yaml --opts MODEL.FOLD_FROZEN_BN True

Times come from ``casdap bench``'s harness (:func:`casdap.bench.time_interleaved`: every repeat
times both models in turn, each sample at least ``--min-time`` seconds of back-to-back calls), one
thread, eval mode, no grad; the ratio CAS-DAP / backbone is the median of the per-repeat ratios of
the same run, so it is the number to compare across machines. ``casdap bench --dap`` measures the
CIFAR-100 settings on every backbone; this script measures any config and its overrides.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from casdap.bench import Stats, time_interleaved
from casdap.config import load_config
from casdap.continual.methods import get_method
from casdap.models.build import build_backbone


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/dap/cifar.yaml")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=15, help="timed samples per model")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per timed sample")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--opts", nargs="*", default=[], help="KEY VALUE config overrides, e.g. MODEL.DAP.STAGES [3]")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, ["MODEL.RANDOM_INIT", "True", *args.opts])  # weights do not change the cost
    dap = cfg.MODEL.DAP
    method = get_method(cfg.MODEL.TRANSFER_TYPE)  # dap, or another prompt method (l2p, dualprompt, coda_prompt)
    model = method.build_model(cfg, int(cfg.DATA.NUMBER_CLASSES)).eval()
    if cfg.MODEL.FOLD_FROZEN_BN:  # the frozen backbone BatchNorm-folded, as in a continual run with the key
        from casdap.models.frozen_fold import fold_frozen_parts

        fold_frozen_parts(model)
    plain = build_backbone(cfg).eval()  # the same backbone with its own head over all classes
    trained = getattr(model, "trained", None)
    if trained is None:
        trained = getattr(getattr(model, "dap_task_predictor", None), "trained", None)
    if trained is not None:  # every task trained: the selection considers them all, as at the stream's end
        trained.fill_(True)
    trainable = method.trainable_params(model)
    label = "CAS-DAP" if method.name == "dap" else method.name
    total = sum(p.numel() for p in model.parameters())
    print(f"{method.name} on {cfg.MODEL.BACKBONE} stages={list(dap.STAGES)} injection={dap.INJECTION} "
          f"tokens={dap.NUM_DAP_TOKENS} task_emb={dap.TASK_EMB} pool={dap.PROMPT_POOL}x{dap.KEYS_PER_TASK} keys "
          f"classes={cfg.DATA.NUMBER_CLASSES}")
    print(f"params: trainable {trainable:,} / total {total:,} ({100 * trainable / total:.2f}%); "
          f"plain backbone with head {sum(p.numel() for p in plain.parameters()):,}")
    with torch.no_grad():
        for size in args.sizes:
            x = torch.randn(args.batch, 3, size, size)
            fns = {"casdap": lambda x=x: model(x), "backbone": lambda x=x: plain(x)}
            samples, _ = time_interleaved(fns, args.reps, warmup=1, min_time=args.min_time, sync=lambda: None)
            m_dap, m_plain = statistics.median(samples["casdap"]), statistics.median(samples["backbone"])
            ratio = Stats.of(a / b for a, b in zip(samples["casdap"], samples["backbone"]))
            print(f"{size}px batch {args.batch}: {label} {1e3 * m_dap:.1f} ms, backbone {1e3 * m_plain:.1f} ms, "
                  f"ratio {ratio.median:.2f} [{ratio.min:.2f}-{ratio.max:.2f}] (median of {args.reps})")


if __name__ == "__main__":
    main()
