"""The throughput part of the GPU check, one measurement per call (scripts/gpu_check.py runs each in a subprocess
of its interpreter and reads the JSON it writes):

    python scripts/gpu_throughput.py step    --data DIR --json FILE [--batches 256,1024] [--steps N] [--warmup N]
    python scripts/gpu_throughput.py loader  --data DIR --json FILE [--workers 1,2,4] [--batch-size 256] [--passes N]
    python scripts/gpu_throughput.py decode  --data DIR --json FILE [--processes 1,16] [--passes N]

step: images/s of the CNN's training step (training.models, set up as training/wiring.py's build_trainer does; bf16
autocast where the GPU has it) on synthetic uint8 images already on the device: what the model could take if
feeding cost nothing. loader: images/s of the training loader alone (benchmarks/loader.py open_source and
epoch_runner: PetastormSource reading the whole train split, no model). decode: the decode-only ceiling of the same
stored bytes (benchmarks.loader.decode_limit). Needs torch, pyarrow and Petastorm (through compat.petastorm), not
Spark or Java.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: the repository's packages (benchmarks, training) import from here
    sys.path.insert(0, str(REPO))


def step_rates(data: str, batches: list[int], steps: int | None, warmup: int | None) -> dict:
    import torch

    from core.config import load_section
    from dataset.info import load_dataset_info
    from training.config import TrainConfig
    from training.device import describe, precision_for
    from training.wiring import make_optimizer
    from training.models import build_model, default_optimizer, loss_function

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    # A CPU host only shows that the part runs: a few steps, not a rate worth comparing.
    steps, warmup = steps or (200 if on_gpu else 10), warmup if warmup is not None else (20 if on_gpu else 2)
    config = load_section("train", TrainConfig)
    spec = load_dataset_info(data).spec
    torch.manual_seed(config.seed)
    model = build_model("cnn", dataset=spec, config=config).to(device)
    optimizer_name, lr, weight_decay = default_optimizer("cnn")
    optimizer = make_optimizer(optimizer_name, config, model, lr, weight_decay)
    precision = precision_for(True, device)  # what --mixed-precision trains with here
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaled)
    loss = loss_function(config.loss)
    image = spec.image
    model.train()
    rates = {}
    for batch in batches:
        x = torch.randint(0, 256, (batch, image.channels, image.size, image.size), dtype=torch.uint8, device=device)
        y = torch.randint(0, len(spec.classes), (batch,), device=device)

        def one_step() -> None:  # as training/epoch.py's forward_backward and optimizer_step, one batch per step
            with precision.context(device):
                per_row = loss(model(x), y)
            scaler.scale(per_row.mean()).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()

        for _ in range(warmup):  # cuDNN's algorithm choice, the allocator, autocast's weight casts
            one_step()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            one_step()
        synchronize(device)  # the GPU runs behind the host: the last step ends when the device says so
        seconds = time.perf_counter() - start
        rates[str(batch)] = {"images_per_s": batch * steps / seconds, "steps": steps, "seconds": round(seconds, 4)}
    return {"device": describe(device), "gpu": on_gpu, "precision": precision.name, "warmup_steps": warmup,
            "model": "cnn", "image": [image.channels, image.size, image.size], "batches": rates}


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rates(data: str, workers: list[int], batch_size: int, passes: int) -> dict:
    from benchmarks.common import rate
    from benchmarks.loader import epoch_runner, open_source

    figures = []
    for count in workers:
        source = open_source(data, count)
        try:
            rows = source.splits["train"].rows
            figures.append({"workers": count, **timed(rate(epoch_runner(source, batch_size=batch_size),
                                                           runs=passes))})
        finally:
            source.close()
    return {"batch_size": batch_size, "train_rows": rows, "rates": figures}


def decode_rates(data: str, processes: list[int], passes: int) -> dict:
    from benchmarks.common import rate
    from benchmarks.loader import decode_limit
    from dataset.info import load_dataset_info

    figures = []
    for count in processes:
        run, close = decode_limit(data, count)
        try:
            figures.append({"processes": count, **timed(rate(run, runs=passes))})
        finally:
            close()
    return {"codec": load_dataset_info(data).spec.image.codec, "rates": figures}


def timed(figure) -> dict:
    """benchmarks.common.Timing as JSON: the median rate of the timed passes (after one warm-up) and their spread."""
    return {"images_per_s": figure.median, "low": figure.low, "high": figure.high, "passes": figure.runs}


def counts(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers separated by commas")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/gpu_throughput.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = parser.add_subparsers(dest="part", required=True)
    for name in ("step", "loader", "decode"):
        part = parts.add_parser(name)
        part.add_argument("--data", required=True, help="an image dataset (a preprocess job's output)")
        part.add_argument("--json", type=Path, required=True, help="where the figures go")
        if name == "step":
            part.add_argument("--batches", type=counts, default=[256, 1024])
            part.add_argument("--steps", type=int, help="timed steps per batch size (default 200 on a GPU, 10 on CPU)")
            part.add_argument("--warmup", type=int, help="untimed steps first (default 20 on a GPU, 2 on CPU)")
        else:
            part.add_argument("--passes", type=int, default=5, help="timed passes after one warm-up (default 5)")
        if name == "loader":
            part.add_argument("--workers", type=counts, default=[1])
            part.add_argument("--batch-size", type=int, default=256)
        if name == "decode":
            part.add_argument("--processes", type=counts, default=[1])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.part == "step":
        figures = step_rates(args.data, args.batches, args.steps, args.warmup)
    elif args.part == "loader":
        figures = loader_rates(args.data, args.workers, args.batch_size, args.passes)
    else:
        figures = decode_rates(args.data, args.processes, args.passes)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
