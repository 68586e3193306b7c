"""Training on a Spark cluster's executors with ``horovod.spark.run``: one cluster serves preprocessing and
training. Each of ``num_proc`` Spark tasks runs the same training loop as under horovodrun, as one Horovod rank."""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("bigtrain.train")


def train_rank(config: dict[str, Any], data_url: str, output_dir: str) -> dict[str, Any]:
    """Runs inside a Spark task (pickled there by horovod.spark.run); returns the rank's metrics."""
    from jobs.common import setup_logging
    from jobs.config import from_dict
    from training.config import TrainConfig
    from training.distributed import init_distributed
    from training.loop import train

    dist = init_distributed("horovod")  # Horovod: the ranks were started by horovod.spark.run
    setup_logging(rank=dist.rank)
    return train(from_dict(TrainConfig, config, prefix="train"), data_url=data_url, output_dir=output_dir,
                 dist=dist).metrics


def run_on_spark(spark, *, config: dict[str, Any], data_url: str, output_dir: str, num_proc: int) -> dict[str, Any]:
    """Rank 0's metrics of a run of ``num_proc`` Horovod ranks on the executors of ``spark``'s cluster."""
    import horovod.spark

    log.info("training on Spark (%s) with %d Horovod ranks", spark.sparkContext.master, num_proc)
    results = horovod.spark.run(train_rank, args=(config, data_url, output_dir), num_proc=num_proc,
                                use_gloo=True, verbose=0)  # Horovod: one Spark task per rank, Gloo between them
    return results[0]
