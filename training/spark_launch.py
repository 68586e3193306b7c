"""Training on a Spark cluster's executors: one cluster serves preprocessing and training. Each of ``num_proc``
Spark tasks runs the same training loop, as one Horovod rank (``horovod.spark.run``) or, with the torch backend,
as one DDP rank started by Spark's own ``TorchDistributor`` (barrier tasks running torchrun; no Horovod needed)."""
from __future__ import annotations

import logging
from typing import Any

from core.config import from_dict
from core.logs import setup_logging
from training.config import TrainConfig
from training.distributed import init_distributed
from training.wiring import fit

log = logging.getLogger("bigtrain.train")


def train_rank(config: dict[str, Any], data_url: str, output_dir: str, backend: str = "horovod") -> dict[str, Any]:
    """Runs inside a Spark task (pickled there by horovod.spark.run or TorchDistributor); the rank's metrics."""
    train_config = from_dict(TrainConfig, config, prefix="train")
    # Horovod: the ranks were started by horovod.spark.run (DDP: by torchrun); each pins its own GPU if it has one.
    dist = init_distributed(backend, device=train_config.device)
    setup_logging(rank=dist.rank)
    metrics = fit(train_config, data_url=data_url, output_dir=output_dir, dist=dist).metrics
    dist.close()
    return metrics


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


def gpus_per_task(conf: dict[str, str]) -> float:
    """GPUs each Spark task is given (``spark.task.resource.gpu.amount``; 0 when the cluster schedules none).
    What the executors have is what counts: the driver, where this runs, often has no GPU."""
    value = conf.get("spark.task.resource.gpu.amount") or "0"
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"Spark conf spark.task.resource.gpu.amount={value!r} is not a number") from None


def _run_with_torch_distributor(spark, *, config: dict[str, Any], data_url: str, output_dir: str,
                                num_proc: int) -> dict[str, Any]:
    from pyspark.ml.torch.distributor import TorchDistributor

    gpus = gpus_per_task(dict(spark.sparkContext.getConf().getAll()))
    use_gpu = config.get("device", "auto") != "cpu" and gpus > 0
    where = ("one GPU per task" if use_gpu else "CPU: train.device is cpu" if gpus > 0
             else "CPU: the cluster schedules no GPUs (spark.task.resource.gpu.amount)")
    log.info("training on Spark (%s) with %d DDP ranks (TorchDistributor, %s)", spark.sparkContext.master, num_proc,
             where)
    # DDP: barrier tasks on the executors, each starting torchrun and seeing only its own GPUs; NCCL for CUDA
    # tensors and Gloo for CPU ones on GPUs, Gloo alone on CPUs.
    distributor = TorchDistributor(num_processes=num_proc, local_mode=False, use_gpu=use_gpu)
    return distributor.run(train_rank, config, data_url, output_dir, "torch")
