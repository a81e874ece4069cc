"""``torchrun`` entry for the distributed tests: runs one or more ``casdap cl`` argument lists,
separated by ``+``, one after another in the same process group (as that many launches would).
After each run rank 0 records every rank's checksum of the trainable weights in the run's folder
and, once every rank is past the run, prints ``END_OF_RUN`` so the launch's stdout splits by run.
One launch serves several tests: starting the processes costs more than these tiny runs."""

import json
import sys

import torch
import torch.distributed as dist

from casdap.cli import build_parser
from casdap.cli.cl import resolve_config
from casdap.continual.runner import prepare_backbone, run_continual

END_OF_RUN = "cl_launch: end of run"


def split_runs(argv: list[str]) -> list[list[str]]:
    runs: list[list[str]] = [[]]
    for arg in argv:
        if arg == "+":
            runs.append([])
        else:
            runs[-1].append(arg)
    return [r for r in runs if r]


if __name__ == "__main__":
    torch.set_num_threads(1)
    for argv in split_runs(sys.argv[1:]):
        args = build_parser().parse_args(["cl", *argv])
        cfg = resolve_config(args)
        prepare_backbone(cfg)  # as the command does: rank 0 makes a missing embedded backbone, the others wait
        result = run_continual(cfg, progress=False)
        model = result.strategy.model
        trainable = [p.detach().reshape(-1) for p in model.parameters() if p.requires_grad]
        flat = torch.cat(trainable) if trainable else torch.zeros(0)
        sums = [torch.zeros(2, dtype=torch.float64) for _ in range(dist.get_world_size())]
        dist.all_gather(sums, torch.stack([flat.double().sum(), flat.double().abs().sum()]))
        if dist.get_rank() == 0:
            (result.output_dir / "rank_checksums.json").write_text(json.dumps([s.tolist() for s in sums]))
        sys.stdout.flush()
        dist.barrier()  # every rank's output of this run is written before the marker
        if dist.get_rank() == 0:
            print(END_OF_RUN, flush=True)
        dist.barrier()
    dist.destroy_process_group()
