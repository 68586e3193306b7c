"""Growth: the loader's peak memory and the preprocessing time at 1x, 4x and 16x the data."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks.common import Result, check

WORKER = """
import json, sys
from benchmarks.common import peak_rss_mb
from benchmarks.loader import bigtrain_loader
before = peak_rss_mb()
run, rows = bigtrain_loader(sys.argv[1], workers=2)
run()
print("BENCH " + json.dumps({"rows": rows, "peak_mb": peak_rss_mb(), "before_mb": before}))
"""


def loader_peak_mb(dataset: str) -> dict:
    done = subprocess.run([sys.executable, "-c", WORKER, dataset], capture_output=True, text=True, timeout=900,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(next(l for l in done.stdout.splitlines() if l.startswith("BENCH ")).split(" ", 1)[1])


def growth_results(spark, raws: dict[int, str], work: str, n_images: dict[int, int]) -> list[Result]:
    from benchmarks.preprocess import run_image_job

    seconds, memory = {}, {}
    for factor, raw in sorted(raws.items()):
        out = os.path.join(work, f"x{factor}")
        seconds[factor], _ = run_image_job(spark, raw, out)
        memory[factor] = loader_peak_mb(out)
    small, large = min(raws), max(raws)
    mem_ratio = memory[large]["peak_mb"] / memory[small]["peak_mb"]
    per_image = {f: seconds[f] / n_images[f] for f in seconds}
    time_ratio = per_image[large] / per_image[small]
    figures = ", ".join(f"{f}x: {n_images[f]} images {seconds[f]:.1f}s, loader peak {memory[f]['peak_mb']:.0f} MB"
                        for f in sorted(seconds))
    return [
        Result("growth", f"loader peak memory {large}x / {small}x", mem_ratio, "", figures, "<= 1.2 (flat)",
               check(mem_ratio, "<=", 1.2)),
        Result("growth", f"preprocessing time per image {large}x / {small}x", time_ratio, "",
               "1.0 = linear; below 1 = fixed start-up costs amortised", "<= 1.2 (linear)",
               check(time_ratio, "<=", 1.2)),
    ]
