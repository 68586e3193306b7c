"""Train a model on a bigtrain dataset, data-parallel with Horovod; evaluate it on the test split.

Launch:
    horovodrun -np 2 -H localhost:2 python jobs/train.py --data runs/demo/dataset --output runs/demo/model
    python jobs/train.py --data runs/demo/dataset --output runs/demo/model          # one process
    bigtrain train --data runs/demo/dataset --output runs/demo/model --epochs 5
    torchrun --nproc_per_node 2 jobs/train.py --backend torch --data runs/demo/dataset --output runs/demo/model
    torchrun --nproc_per_node 8 jobs/train.py --backend torch --mixed-precision --data s3://bucket/ds \
        --output /mnt/model                                           # one process per GPU (NCCL + Gloo)
    horovodrun -np 3 --min-np 2 --max-np 3 --host-discovery-script scripts/discover_hosts.sh \
        python jobs/train.py --elastic --data runs/demo/dataset --output runs/demo/model --checkpoint-every-steps 20
    horovodrun -np 8 -H host1:4,host2:4 python jobs/train.py --data s3://bucket/ds --output /mnt/model
    spark-submit --master spark://master:7077 --py-files dist/bigtrain-src.zip jobs/train.py --launcher spark \
        --num-proc 8 --data s3://bucket/ds --output /mnt/model        # ranks on the Spark executors

Writes (rank 0): <output>/checkpoint.pt + checkpoint.json (weights, config, class map, dataset snapshot; SHA-256;
loads with training.checkpoint.load_model), <output>/checkpoints/ (resume points: the same command run again
continues from the newest), metrics.json (test metrics, per-epoch history), metrics.jsonl and tensorboard/ (per
epoch), evaluation.json, confusion_matrix.png and training_curves.png.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from core.config import load_section
from core.errors import PeerLostError, UsageError
from core.logs import counted, setup_logging
from core.paths import to_url
from jobs.common import (
    ArgumentParser,
    add_config_flags,
    check_apart,
    check_exists,
    check_output_kind,
    positive_float,
    positive_int,
    resolve_master,
    run_main,
)
from training.config import TrainConfig, model_name_problem

log = logging.getLogger("bigtrain.train")



def _workers(text: str) -> int | str:
    """--loader-workers: auto or a count >= 0."""
    return "auto" if text == "auto" else positive_int("--loader-workers", allow_zero=True)(text)

def _model(text: str) -> str:
    """--model: a built-in model or package.module:factory."""
    problem = model_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="bigtrain train",
        description="Train on a preprocessed bigtrain dataset (Petastorm), data-parallel with Horovod or PyTorch DDP, "
                    "validate every epoch, evaluate on the test split. Run under horovodrun (or torchrun with "
                    "--backend torch) for several processes. Running the same command again resumes from the newest "
                    "checkpoint in --output.",
        epilog="Config keys (section train in conf/bigtrain.yaml) can be set with --set train.KEY=VALUE; "
               "flags win over config. Where the time went: every epoch's line names the slowest rank and what "
               "held it up, and metrics.json keeps each rank's stage ledger (history[].ledger, drawn in "
               "stages.png). Exit codes: 0 done; 1 data or checkpoint refused; 2 flag, key or launch wrong, or your "
               "model, loss or collate function failed on the first batch (its traceback in "
               "--output/first-batch-error/); 4 a "
               "rank waited for data beyond train.max_data_stall (with train.stall_budget_action=fail); 5 no rank "
               "progressed for train.watchdog_seconds (default 300: hang.json and hang-stacks/ in --output name "
               "the stuck rank); 75 another run holds --output; 130 Ctrl-C.")
    parser.add_argument("--data", required=True, metavar="DIR_OR_URL", help="a dataset written by a preprocess job")
    parser.add_argument("--output", required=True, metavar="DIR", help="where checkpoint.pt and metrics.json go")
    parser.add_argument("--epochs", type=positive_int("--epochs"), metavar="N", help="passes over the train split "
                        "(default: train.epochs, 40; early stopping ends most runs sooner)")
    parser.add_argument("--batch-size", type=positive_int("--batch-size"), metavar="N", help="per rank")
    parser.add_argument("--lr", type=positive_float("--lr"), metavar="X",
                        help="learning rate per rank, scaled by the number of ranks unless train.scale_lr=false "
                             "(default: the model's, cnn 0.01 with sgd, rnn/lstm/gru 0.002 with adam)")
    parser.add_argument("--seed", type=int, metavar="N", help="seeds initial weights and shuffling (default 42)")
    parser.add_argument("--model", type=_model, metavar="NAME|MODULE:FACTORY",
                        help="auto (default): what the dataset calls for, cnn for images, fasttext for sequences; "
                             "or cnn, fasttext, transformer, lstm, gru, rnn (for labels that hang on word order, "
                             "try lstm); or your own model as an import path, "
                             "package.module:factory, called as factory(dataset_spec, model_config) with the "
                             "train.model_config mapping (--set train.model_config.KEY=VALUE); see README")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), help="default: the model's (see --lr)")
    parser.add_argument("--loader-workers", type=_workers, metavar="N|auto",
                        help="loader processes per rank that read and decode batches (0: in the training process; "
                             "auto, the default: the host's cores divided by its ranks)")
    parser.add_argument("--backend", choices=("auto", "horovod", "torch", "single"), default="auto",
                        help="horovod: Horovod (horovodrun); torch: PyTorch DDP (torchrun; Gloo on CPU, NCCL on GPU); "
                             "single: one process; auto: torch under torchrun, else Horovod when installed "
                             "(a world of one without horovodrun)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"),
                        help="auto (default): each process trains on its own GPU (cuda:LOCAL_RANK) when the host has "
                             "GPUs, else on the CPU; cuda: fail if there is none; cpu: never use a GPU")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    recovery = parser.add_argument_group("checkpoints, resume and elastic runs")
    resume_flags = recovery.add_mutually_exclusive_group()
    resume_flags.add_argument("--resume", dest="resume", action="store_const", const="require",
                              help="continue from the newest resume point in <output>/checkpoints, or fail if there "
                                   "is none (default, train.resume=auto: continue when there is one)")
    resume_flags.add_argument("--no-resume", dest="resume", action="store_const", const="never",
                              help="start over even if <output>/checkpoints holds resume points")
    recovery.add_argument("--checkpoint-every-steps", type=positive_int("--checkpoint-every-steps", allow_zero=True), metavar="N",
                          help="a resume point every N optimizer steps, on top of one per epoch (0: epoch ends only)")
    recovery.add_argument("--elastic", action="store_true",
                          help="Horovod Elastic: survive workers leaving or joining (launch with horovodrun "
                               "--min-np/--max-np --host-discovery-script; see README)")
    knobs = parser.add_argument_group("optimisation")
    knobs.add_argument("--lr-schedule", choices=("constant", "step", "cosine"),
                       help="after warmup: constant, step (x train.lr_gamma every train.lr_step_epochs), cosine")
    knobs.add_argument("--warmup-epochs", type=positive_float("--warmup-epochs", allow_zero=True), metavar="X",
                       help="linear learning-rate warmup over the first X epochs (fractions allowed)")
    knobs.add_argument("--backward-passes-per-step", type=positive_int("--backward-passes-per-step"), metavar="K",
                       help="gradient accumulation: one optimizer step per K batches (effective batch K x batch size)")
    knobs.add_argument("--fp16-compression", action="store_true", default=None,
                       help="allreduce gradients in float16 (half the bytes on the wire)")
    knobs.add_argument("--grad-clip-norm", type=positive_float("--grad-clip-norm"), metavar="X",
                       help="clip the global gradient norm to X")
    knobs.add_argument("--weight-decay", type=positive_float("--weight-decay", allow_zero=True), metavar="X",
                       help="L2 penalty in the optimizer")
    knobs.add_argument("--mixed-precision", action="store_true", default=None,
                       help="on GPU: autocast to bfloat16 where the GPU supports it (else float16 with gradient "
                            "scaling); a logged no-op on CPU")
    knobs.add_argument("--early-stopping-patience", type=positive_int("--early-stopping-patience", allow_zero=True), metavar="N",
                       help="stop after N epochs without validation loss improving (0: off)")
    launch = parser.add_argument_group("launching on a Spark cluster")
    launch.add_argument("--launcher", choices=("direct", "spark"), default="direct",
                        help="direct: this process is a rank (horovodrun, torchrun or plain python); spark: run "
                             "--num-proc ranks on the executors of a Spark cluster with horovod.spark.run (with "
                             "--backend torch: Spark's TorchDistributor)")
    launch.add_argument("--num-proc", type=positive_int("--num-proc"), metavar="N",
                        help="ranks for --launcher spark (default: the cluster's default parallelism)")
    launch.add_argument("--master", help="Spark master for --launcher spark (default: spark-submit's, else local[*])")
    add_config_flags(parser, "train")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: run(args), sigterm_interrupts=True,
                    on_interrupt=f"the run is resumable: the same command resumes it from the last checkpoint in "
                                 f"{args.output} (train.resume=auto)")


def run(args: argparse.Namespace) -> int:
    from training.distributed import init_distributed
    from training.wiring import fit

    flags = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             "model": args.model, "optimizer": args.optimizer, "loader_workers": args.loader_workers,
             "progress_bar": "never" if args.no_progress else None, "resume": args.resume,
             "checkpoint_every_steps": args.checkpoint_every_steps, "lr_schedule": args.lr_schedule,
             "warmup_epochs": args.warmup_epochs, "backward_passes_per_step": args.backward_passes_per_step,
             "fp16_compression": args.fp16_compression, "grad_clip_norm": args.grad_clip_norm,
             "weight_decay": args.weight_decay, "mixed_precision": args.mixed_precision,
             "early_stopping_patience": args.early_stopping_patience, "device": args.device}
    config = load_section("train", TrainConfig, config_file=args.config, overrides=args.overrides, flags=flags)
    check_output_kind(to_url(args.output), writes="training output")
    check_exists(to_url(args.data), flag="--data", what="dataset folder")
    check_apart(to_url(args.data).split("/snapshots/")[0], to_url(args.output), input_flag="--data",
                advice="keep the training output and the dataset apart, neither inside the other (a folder in a "
                       "dataset is read as a broken snapshot by every later command)")
    if args.launcher == "spark":
        if args.elastic:
            raise UsageError("--elastic runs under horovodrun (--min-np/--max-np), not with --launcher spark")
        return run_spark(args, config)
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise UsageError(f"--output {args.output} is a file; training writes a folder there")
    dist = init_distributed(args.backend, device=config.device)
    setup_logging(rank=dist.rank)
    if args.elastic and dist.name != "horovod":
        raise UsageError(f"--elastic needs the Horovod backend (this run uses {dist.name}); launch it with "
                         "horovodrun --min-np N --max-np M --host-discovery-script SCRIPT")
    try:
        metrics = fit(config, data_url=args.data, output_dir=args.output, dist=dist, elastic=args.elastic).metrics
    except dist.peer_errors as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PeerLostError(f"rank {dist.rank}: another rank of this job failed or vanished ({detail[:200]}); run "
                            "the same command again to resume from the last resume point in --output") from None
    dist.close()
    if dist.rank == 0:
        report(metrics, args.output)
    return 0


def report(metrics: dict, output: str) -> None:
    """The closing line: the model's test accuracy beside its baselines on the same split."""
    def shown(value):
        return "n/a" if value is None else f"{value:.4f}"

    compared = metrics["baselines"]
    words = compared.get("bag_of_words")
    kept = metrics.get("weights_epoch")
    print(f"train: test accuracy {shown(metrics['test_accuracy'])} on {counted(metrics['test_rows'], 'row')}; "
          f"baselines: majority class {shown(compared['majority_class']['accuracy'])}"
          + (f", bag-of-words {shown(words['accuracy'])}" if words else "")
          + f" ({counted(metrics['world_size'], 'rank')}, {counted(metrics['epochs_completed'], 'epoch')}"
          + (f", weights of epoch {kept}" if kept is not None and kept != metrics["epochs_completed"] else "")
          + f"); outputs in {output}")
    weak = weak_model(metrics)
    if weak:
        print(f"train: warning: {weak}")


def weak_model(metrics: dict) -> str | None:
    """A sentence when the model does no better than a baseline on the same test split (too few epochs, a learning
    rate off, labels that do not follow the inputs): the accuracy line alone is easy to miss in a nightly log."""
    accuracy, compared = metrics["test_accuracy"], metrics["baselines"]
    if accuracy is None:
        return None
    for name, label in (("majority_class", "the majority class"), ("bag_of_words", "a bag-of-words model")):
        baseline = (compared.get(name) or {}).get("accuracy")
        if baseline is not None and accuracy <= baseline and accuracy < 1:  # both perfect: nothing to improve
            return (f"test accuracy {accuracy:.4f} is no better than {label} ({baseline:.4f}) on the same rows: "
                    "train longer (--epochs), check the learning rate, or check that the labels follow the inputs")
    return None


def run_spark(args: argparse.Namespace, config) -> int:
    """--launcher spark: the same loop as Horovod ranks inside Spark tasks (horovod.spark.run), or with
    --backend torch as DDP ranks started by Spark's TorchDistributor."""
    import os
    from dataclasses import asdict

    from pipelines import session
    from training.spark_launch import run_on_spark

    setup_logging()
    spark = session.build_spark(app_name="bigtrain-train", master=resolve_master(args.master, "local[*]"))
    try:
        num_proc = args.num_proc or spark.sparkContext.defaultParallelism
        metrics = run_on_spark(spark, config=asdict(config), data_url=args.data,
                               output_dir=os.path.abspath(args.output), num_proc=num_proc,
                               backend="torch" if args.backend == "torch" else "horovod")
    finally:
        spark.stop()
    report(metrics, args.output)
    return 0


def exit_without_teardown(code: int) -> None:
    """End a torchrun worker without the interpreter's teardown, where Gloo's threads can abort a rank that has
    finished ("terminate called without an active exception", SIGABRT, seen in the test suite under load even after
    destroy_process_group; pytorch/pytorch#190489): torchrun would report the run as failed and kill the other
    ranks. Every output is written and closed by now; the logs and streams are flushed here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_code = main()
    from training.distributed import launched_by_torchrun

    if launched_by_torchrun():
        exit_without_teardown(exit_code)
    sys.exit(exit_code)
