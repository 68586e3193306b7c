"""Build dist/bigtrain-src.zip: what `spark-submit --py-files` ships to the executors (and the driver, when the
project is not installed there): every package of the project, with conf/bigtrain.yaml inside as the core
package's defaults (core.config). ``compat/petastorm_hook.py`` travels in it: run with the zip on ``PYTHONPATH``, it
installs the hook that applies ``compat.petastorm`` on a plain ``import petastorm`` into a node's Python.

Usage: python scripts/make_dist.py [OUTPUT_ZIP]
"""
from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every package of ARCHITECTURE.md's layers (tests/test_architecture.py checks the list is complete).
PACKAGES = ("core", "compat", "dataset", "pipelines", "training", "inference", "orchestration", "jobs")


def build(output: Path) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in PACKAGES:
            for path in sorted((ROOT / package).rglob("*.py")):
                archive.write(path, path.relative_to(ROOT).as_posix())
        archive.write(ROOT / "conf" / "bigtrain.yaml", "core/bigtrain.yaml")
    return output


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/make_dist.py", description="Build the zip of bigtrain's packages (conf/bigtrain.yaml inside) that "
        "spark-submit --py-files ships to the driver and the executors.")
    parser.add_argument("output", nargs="?", type=Path, default=ROOT / "dist" / "bigtrain-src.zip", metavar="OUTPUT_ZIP",
                        help="where the zip goes (default: dist/bigtrain-src.zip)")
    args = parser.parse_args(argv)
    if args.output.suffix != ".zip":
        parser.error(f"OUTPUT_ZIP {args.output} must end in .zip (spark-submit --py-files takes .zip, .egg or .py)")
    return args


if __name__ == "__main__":
    out = build(parse_args().output)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB): spark-submit --py-files {out} jobs/<job>.py ...")
    # bigtrain's jobs install the Petastorm layer themselves; a user's own `import petastorm` on an executor needs
    # the hook in the nodes' Python (a .pth inside the zip is never read), which `make setup` venvs already have.
    print(f"for a plain `import petastorm` on nodes whose Python was not set up by `make setup`: "
          f"PYTHONPATH={out} <their python> -m compat.petastorm_hook")
