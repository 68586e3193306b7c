"""Training on a Spark cluster's executors: one cluster serves preprocessing and training. Each of ``num_proc``
Spark tasks runs the same training loop, as one Horovod rank (``horovod.spark.run``) or, with the torch backend,
as one DDP rank started by Spark's own ``TorchDistributor`` (barrier tasks running torchrun; no Horovod needed)."""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("bigtrain.train")


def train_rank(config: dict[str, Any], data_url: str, output_dir: str, backend: str = "horovod") -> dict[str, Any]:
    """Runs inside a Spark task (pickled there by horovod.spark.run or TorchDistributor); the rank's metrics."""
    from jobs.common import setup_logging
    from jobs.config import from_dict
    from training.config import TrainConfig
    from training.distributed import init_distributed
    from training.loop import train

    dist = init_distributed(backend)  # Horovod: the ranks were started by horovod.spark.run (DDP: by torchrun)
    setup_logging(rank=dist.rank)
    return train(from_dict(TrainConfig, config, prefix="train"), data_url=data_url, output_dir=output_dir,
                 dist=dist).metrics


def run_on_spark(spark, *, config: dict[str, Any], data_url: str, output_dir: str, num_proc: int,
                 backend: str = "horovod") -> dict[str, Any]:
    """Rank 0's metrics of a run of ``num_proc`` ranks on the executors of ``spark``'s cluster."""
    if backend == "torch":
        return _run_with_torch_distributor(spark, config=config, data_url=data_url, output_dir=output_dir,
                                           num_proc=num_proc)
    import horovod.spark

    log.info("training on Spark (%s) with %d Horovod ranks", spark.sparkContext.master, num_proc)
    results = horovod.spark.run(train_rank, args=(config, data_url, output_dir), num_proc=num_proc,
                                use_gloo=True, verbose=0)  # Horovod: one Spark task per rank, Gloo between them
    return results[0]


def _run_with_torch_distributor(spark, *, config: dict[str, Any], data_url: str, output_dir: str,
                                num_proc: int) -> dict[str, Any]:
    import torch
    from pyspark.ml.torch.distributor import TorchDistributor

    log.info("training on Spark (%s) with %d DDP ranks (TorchDistributor)", spark.sparkContext.master, num_proc)
    # DDP: barrier tasks on the executors, each starting torchrun; Gloo on CPU, NCCL on GPU.
    distributor = TorchDistributor(num_processes=num_proc, local_mode=False, use_gpu=torch.cuda.is_available())
    return distributor.run(train_rank, config, data_url, output_dir, "torch")
