"""``torchrun`` entry for the distributed test: runs ``casdap cl`` arguments on every rank, then
rank 0 records every rank's checksum of the trainable weights."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
import dap_double  # noqa: E402

import casdap.models  # noqa: E402

sys.modules["casdap.models.dap"] = dap_double
casdap.models.dap = dap_double

from casdap.cli import build_parser  # noqa: E402
from casdap.cli.cl import resolve_config  # noqa: E402
from casdap.continual.runner import run_continual  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    args = build_parser().parse_args(["cl", *sys.argv[1:]])
    result = run_continual(resolve_config(args), progress=False)
    model = result.strategy.model
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])
    sums = [torch.zeros(2, dtype=torch.float64) for _ in range(dist.get_world_size())]
    dist.all_gather(sums, torch.stack([flat.double().sum(), flat.double().abs().sum()]))
    if dist.get_rank() == 0:
        (result.output_dir / "rank_checksums.json").write_text(json.dumps([s.tolist() for s in sums]))
    dist.destroy_process_group()
