"""``torchrun`` entry for the distributed test: runs ``casdap cl`` arguments on every rank, then
rank 0 records every rank's checksum of the trainable weights."""

import json
import sys

import torch
import torch.distributed as dist

from casdap.cli import build_parser
from casdap.cli.cl import resolve_config
from casdap.continual.runner import prepare_backbone, run_continual

if __name__ == "__main__":
    torch.set_num_threads(1)
    args = build_parser().parse_args(["cl", *sys.argv[1:]])
    cfg = resolve_config(args)
    prepare_backbone(cfg)  # as the command does: rank 0 makes a missing embedded backbone, the others wait
    result = run_continual(cfg, progress=False)
    model = result.strategy.model
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])
    sums = [torch.zeros(2, dtype=torch.float64) for _ in range(dist.get_world_size())]
    dist.all_gather(sums, torch.stack([flat.double().sum(), flat.double().abs().sum()]))
    if dist.get_rank() == 0:
        (result.output_dir / "rank_checksums.json").write_text(json.dumps([s.tolist() for s in sums]))
    dist.destroy_process_group()
