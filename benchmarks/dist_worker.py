"""Run by benchmarks/training.py, alone or under horovodrun: training steps on in-memory batches, allreduce and
memcpy bandwidth. Rank 0 prints one line: BENCH {json}."""
from __future__ import annotations

import argparse
import json
import time

import torch

from training.distributed import init_distributed
from training.models import CNN

STEPS, BATCH, MB = 30, 64, 64


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()
    dist = init_distributed("horovod")
    torch.set_num_threads(args.threads)
    torch.manual_seed(dist.rank)
    model = CNN(in_channels=3, image_size=32, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dist.broadcast_state(model, optimizer)
    optimizer = dist.distributed_optimizer(optimizer, model)
    x, y = torch.rand(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(5):
        step()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    dist.barrier()
    samples_per_s = dist.size * BATCH * STEPS / (time.perf_counter() - start)

    tensor = torch.ones(MB * 2**20 // 4)
    dist.allreduce_sum(tensor, name="warm")
    start = time.perf_counter()
    for i in range(3):
        dist.allreduce_sum(tensor, name=f"bw{i}")
    allreduce = 3 * tensor.numel() * 4 / (time.perf_counter() - start) / 1e9
    target = torch.empty_like(tensor)
    start = time.perf_counter()
    for _ in range(3):
        target.copy_(tensor)
    memcpy = 3 * tensor.numel() * 4 / (time.perf_counter() - start) / 1e9
    if dist.rank == 0:
        print("BENCH " + json.dumps({"samples_per_s": samples_per_s, "allreduce_gb_s": allreduce,
                                     "memcpy_gb_s": memcpy, "world": dist.size}), flush=True)


if __name__ == "__main__":
    main()
