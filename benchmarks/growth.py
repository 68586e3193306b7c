"""Growth: the loader's memory growth over its process's baseline (its workers included) and the preprocessing
time, at 1x, 4x and 16x the data."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks.common import Result, check

WORKER = """
import json, sys
from benchmarks.common import memory_growth_mb
from benchmarks.loader import epoch_runner, open_source
source = open_source(sys.argv[1], int(sys.argv[2]), "train.shuffle_buffer=0")  # windows of one row group
growth = memory_growth_mb(lambda: epoch_runner(source)())
source.close()
print("BENCH " + json.dumps({"rows": source.splits["train"].rows, "growth_mb": growth}))
"""


def loader_growth_mb(dataset: str, workers: int = 2) -> dict:
    """The loader's memory growth over one epoch, in a fresh process (its own and its workers' memory). Windows of
    one row group: with the default window (1,024 rows) the 1x train split (800 rows) is one window, so one of
    the two workers would never hold data and 1x would look smaller than it is."""
    done = subprocess.run([sys.executable, "-c", WORKER, dataset, str(workers)], capture_output=True, text=True,
                          timeout=900, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("BENCH ")).split(" ", 1)[1])


def growth_results(spark, raws: dict[int, str], work: str, n_images: dict[int, int]) -> list[Result]:
    from benchmarks.preprocess import run_image_job

    seconds, memory = {}, {}
    for factor, raw in sorted(raws.items()):
        out = os.path.join(work, f"x{factor}")
        # row groups of one size at every factor (the job caps them at row_group_size_mb; small data would
        # otherwise make 2 growing ones): the loader holds a few row groups, so memory follows their size, not
        # the amount of data
        seconds[factor], _ = run_image_job(spark, raw, out, ranks=2 * factor)
        memory[factor] = loader_growth_mb(out)
    small, large = min(raws), max(raws)
    mem_ratio = memory[large]["growth_mb"] / memory[small]["growth_mb"]
    per_image = {f: seconds[f] / n_images[f] for f in seconds}
    time_ratio = per_image[large] / per_image[small]
    figures = ", ".join(f"{f}x: {n_images[f]} images {seconds[f]:.1f}s, loader growth {memory[f]['growth_mb']:.0f} MB"
                        for f in sorted(seconds))
    return [
        Result("growth", f"loader memory growth {large}x / {small}x", mem_ratio, "", figures, "<= 1.2 (flat)",
               check(mem_ratio, "<=", 1.2)),
        Result("growth", f"preprocessing time per image {large}x / {small}x", time_ratio, "",
               "1.0 = linear; below 1 = fixed start-up costs amortised", "<= 1.2 (linear)",
               check(time_ratio, "<=", 1.2)),
    ]
