"""Run by tests/training/test_horovod.py under `horovodrun -np 2`: records what each rank read and its weights.

Usage: horovodrun -np 2 -H localhost:2 python tests/training/horovod_worker.py DATASET OUTPUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from core.config import load_section
from training.config import TrainConfig
from training.distributed import init_distributed
from training.wiring import fit
from training.petastorm_source import PetastormSource
from training.shards import EpochCounter, plan_shard


def main(data: str, out: str) -> None:
    dist = init_distributed("horovod")
    loader_config = load_section("train", TrainConfig, overrides=["train.loader_workers=2", "train.seed=1",
                                                                 "train.shuffle_buffer=16"])
    source = PetastormSource.open(data, loader_config, local_ranks=dist.local_size)
    split = source.splits["train"]
    plan = plan_shard(split.row_group_sizes, dist.rank, dist.size)
    shard = [int(i) for _, _, ids in source.evaluation_batches("train", plan, batch_size=8) for i in ids]
    counter = EpochCounter(split, plan)
    steps = sum(1 for _ in source.training_batches(plan, batch_size=8, epoch=0, counter=counter))
    source.close()
    # A different seed per rank: each rank initialises different weights, so only the broadcast from rank 0 and
    # the gradient allreduce can make them agree at the end.
    config = load_section("train", TrainConfig, overrides=["train.epochs=4", "train.batch_size=8", "train.lr=0.02",
                                                          "train.progress_bar=never", f"train.seed={1000 + dist.rank}"])
    model_dir = Path(out) / "model"
    model = fit(config, data_url=data, output_dir=model_dir, dist=dist).model
    weights = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    np.save(Path(out) / f"weights_rank{dist.rank}.npy", weights)
    (Path(out) / f"rank{dist.rank}.json").write_text(json.dumps(
        {"rank": dist.rank, "size": dist.size, "shard": shard, "steps": steps, "first_pass": counter.first_pass_rows}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
