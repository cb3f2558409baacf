"""Run under `torchrun --nproc_per_node 2`: record which examples (and tasks) each rank gets at each step.

Two set-ups: the sampler's own rank slicing (num_replicas/rank), and Accelerate's split_batches=True over a
global-batch sampler. Each rank writes <out>/sampler-rank<r>.json; tests/test_sampling.py checks them.
"""

import json
import sys
from pathlib import Path

from accelerate import Accelerator, DataLoaderConfiguration
from torch.utils.data import DataLoader

from hyper_retrieval.training.sampler import MultiTaskBatchSampler

SIZES = [50, 30, 20]


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(split_batches=True))
    rank, world = accelerator.process_index, accelerator.num_processes
    sliced = MultiTaskBatchSampler(SIZES, batch_size=4, mode="homogeneous", temperature=2.0, seed=7,
                                   num_replicas=world, rank=rank)
    sliced.set_epoch(1)
    global_sampler = MultiTaskBatchSampler(SIZES, batch_size=4 * world, mode="homogeneous", temperature=2.0, seed=7)
    global_sampler.set_epoch(1)
    loader = accelerator.prepare(DataLoader(list(range(sum(SIZES))), batch_sampler=global_sampler))
    result = {
        "world": world,
        "sliced": list(sliced),
        "accelerate": [batch.tolist() for batch in loader],
    }
    (out / f"sampler-rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
