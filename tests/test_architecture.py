"""The layers of ARCHITECTURE.md, enforced over the import graph: every import of the project's own modules,
at the top of a file or inside a function, points down (or stays inside its package); the two middle packages,
pipelines (Spark) and training (PyTorch), never import each other; a job does not import another job; and a
function-level import of a project module is only for one that pulls in a heavy optional dependency.

The layer table is read from ARCHITECTURE.md itself, so the document and the check cannot drift apart.
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Third-party packages that are slow to import or absent on some hosts (GPU nodes have no Spark or Java; Spark
# executors need no torch): the only reason to import a project module inside a function.
HEAVY = {"pyspark", "torch", "horovod", "petastorm", "matplotlib", "cv2", "tensorboard", "pyarrow", "pandas",
         "fsspec", "s3fs"}
SHARED_JOB_MODULES = {"jobs.common", "jobs.cli"}  # what every entry point may use; a job never imports another
# Engines a package must not import at all (anywhere) / at the top of a file: the contract and the base run on
# every host; training runs on GPU nodes without Spark or Java; the Spark side runs on executors without torch.
NEVER = {"core": {"pyspark", "torch", "horovod", "petastorm"}, "dataset": {"pyspark", "torch", "horovod", "petastorm"},
         "pipelines": {"torch", "horovod"}, "compat": {"pyspark", "torch", "horovod"}}
NOT_AT_TOP = {"training": {"pyspark"}}


def read_layers(text: str) -> list[set[str]]:
    """The ```layers block of ARCHITECTURE.md, top layer first: ``a | b`` are independent packages of one layer."""
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    if block is None:
        raise AssertionError("ARCHITECTURE.md has no ```layers block")
    layers = []
    for line in block.group(1).splitlines():
        names = line.split("#", 1)[0].split()
        packages = {n for n in names if n != "|"}
        if packages:
            layers.append(packages)
    return layers


@dataclass(frozen=True)
class Import:
    source: str        # importing module, e.g. training.loop
    target: str        # imported project module, e.g. dataset.info
    line: int
    in_function: bool

    def __str__(self) -> str:
        where = "inside a function" if self.in_function else "at the top"
        return f"{self.source}:{self.line} imports {self.target} ({where})"


def modules_of(root: Path, packages: set[str]) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (a module, or the package whose attribute it is), or None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> tuple[list[Import], dict[str, bool]]:
    """(project imports, {third-party top-level name: imported only inside functions}) of one file."""
    tree = ast.parse(path.read_text(), str(path))
    found, third_party = [], {}
    functions = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            target = _resolve(name, modules)
            if target is None:
                root = name.split(".")[0]
                third_party[root] = third_party.get(root, True) and id(node) in functions
            elif target != module:
                found.append(Import(module, target, node.lineno, id(node) in functions))
    return found, third_party


def layer_of(module: str, layers: list[set[str]]) -> int:
    package = module.split(".")[0]
    for rank, packages in enumerate(reversed(layers)):
        if package in packages:
            return rank
    raise AssertionError(f"{module}: package {package} is in no layer of ARCHITECTURE.md")


def violations(root: Path, layers: list[set[str]]) -> list[str]:
    """Every import that breaks the rules, as a sentence naming the file, the line and the rule."""
    modules = modules_of(root, set().union(*layers))
    graph, heavy_direct, problems = {}, {}, []
    for module, path in modules.items():
        graph[module], third_party = imports_of(module, path, modules)
        heavy_direct[module] = any(not inside for name, inside in third_party.items() if name in HEAVY)
        package = module.split(".")[0]
        for name, inside in sorted(third_party.items()):
            if name in NEVER.get(package, ()) or (name in NOT_AT_TOP.get(package, ()) and not inside):
                problems.append(f"{module} imports {name}{'' if inside else ' at the top'}: {package} must run "
                                f"where {name} is not installed")
    heavy = _heavy_closure(graph, heavy_direct)
    for module, found in sorted(graph.items()):
        for imp in found:
            source_package, target_package = module.split(".")[0], imp.target.split(".")[0]
            if source_package != target_package:
                up, down = layer_of(module, layers), layer_of(imp.target, layers)
                if down > up:
                    problems.append(f"{imp}: upward, {target_package} is a higher layer than {source_package}")
                elif down == up:
                    problems.append(f"{imp}: sideways, {source_package} and {target_package} are independent")
            elif (source_package == "jobs" and imp.target not in SHARED_JOB_MODULES
                  and module not in SHARED_JOB_MODULES):
                problems.append(f"{imp}: one job imports another (move what they share down a layer)")
            if imp.in_function and not heavy[imp.target]:
                problems.append(f"{imp}: {imp.target} is light (no {', '.join(sorted(HEAVY))} at its top): "
                                "import it at the top of the file")
    return problems


def _heavy_closure(graph: dict[str, list[Import]], heavy: dict[str, bool]) -> dict[str, bool]:
    """A module is heavy when it, or a project module it imports at its top, imports a heavy package at its top."""
    heavy = dict(heavy)
    changed = True
    while changed:
        changed = False
        for module, found in graph.items():
            if not heavy[module] and any(heavy[i.target] for i in found if not i.in_function):
                heavy[module] = changed = True
    return heavy


def architecture() -> tuple[str, list[set[str]]]:
    text = (REPO / "ARCHITECTURE.md").read_text()
    return text, read_layers(text)


def test_every_import_points_down_the_layers():
    _, layers = architecture()
    problems = violations(REPO, layers)
    assert not problems, "imports against ARCHITECTURE.md's layers:\n  " + "\n  ".join(problems)


def test_architecture_md_names_every_package_of_the_tree_and_nothing_else():
    text, layers = architecture()
    declared = set().union(*layers)
    on_disk = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert declared == on_disk, f"ARCHITECTURE.md's layers {sorted(declared)} != packages {sorted(on_disk)}"
    for package in declared:  # each package's section says what it owns, module by module
        for module in sorted((REPO / package).glob("*.py")):
            if module.name != "__init__.py":
                assert f"{package}/{module.name}" in text or f"{package}.{module.stem}" in text, \
                    f"ARCHITECTURE.md does not mention {package}/{module.name}"


def test_every_package_is_installed_and_shipped_to_executors():
    _, layers = architecture()
    declared = set().union(*layers)
    pyproject = (REPO / "pyproject.toml").read_text()
    include = set(re.findall(r'"(\w+)\*"', re.search(r"include = \[(.*?)\]", pyproject).group(1)))
    assert include == declared, "pyproject.toml [tool.setuptools.packages.find] include"
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_dist
    finally:
        sys.path.pop(0)
    assert set(make_dist.PACKAGES) == declared, "scripts/make_dist.py PACKAGES (what spark-submit --py-files ships)"


def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    return root


LAYERS = [{"jobs"}, {"inference"}, {"pipelines", "training"}, {"dataset"}, {"core"}]
CLEAN = {
    "core/__init__.py": "", "core/paths.py": "import os\n", "core/errors.py": "",
    "dataset/__init__.py": "", "dataset/layout.py": "from core import paths\nimport pyarrow\n",
    "pipelines/__init__.py": "", "pipelines/storage.py": "import pyspark\nfrom dataset import layout\n",
    "training/__init__.py": "", "training/loop.py": "import torch\nfrom dataset.layout import exists\n",
    "inference/__init__.py": "", "inference/predict.py": "from pipelines import storage\nfrom training import loop\n",
    "jobs/__init__.py": "", "jobs/common.py": "from core.errors import *\n",
    "jobs/train.py": "from jobs.common import x\ndef run():\n    from training.loop import train\n",
    "jobs/predict.py": "def run():\n    from inference import predict\n",
}


def test_the_check_passes_a_clean_tree(tmp_path):
    assert violations(_plant(tmp_path, CLEAN), LAYERS) == []


@pytest.mark.parametrize("planted, expected", [
    ({"core/paths.py": "from dataset import layout\n"}, "core.paths:1 imports dataset.layout (at the top): upward"),
    ({"dataset/layout.py": "def f():\n    from training.loop import train\n"},
     "dataset.layout:2 imports training.loop (inside a function): upward"),
    ({"training/loop.py": "import torch\nfrom pipelines.storage import read\n"},
     "training.loop:2 imports pipelines.storage (at the top): sideways"),
    ({"pipelines/storage.py": "def f():\n    import training.loop\n"},
     "pipelines.storage:2 imports training.loop (inside a function): sideways"),
    ({"jobs/predict.py": "from jobs.train import run\n"}, "jobs.predict:1 imports jobs.train (at the top): one job"),
    ({"training/loop.py": "import torch\nfrom pyspark.sql import functions\n"}, "training.loop imports pyspark at the top"),
    ({"dataset/layout.py": "def f():\n    import torch\n"}, "dataset.layout imports torch: dataset must run"),
    ({"training/loop.py": "def f():\n    from core import paths\n"},
     "training.loop:2 imports core.paths (inside a function): core.paths is light"),
])
def test_the_check_fails_on_a_planted_import(tmp_path, planted, expected):
    problems = violations(_plant(tmp_path, {**CLEAN, **planted}), LAYERS)
    assert any(p.startswith(expected) for p in problems), problems


def test_the_layers_block_reads_independent_packages(tmp_path):
    assert read_layers("x\n```layers\njobs\npipelines | training   # the middle\ncore\n```\n") == [
        {"jobs"}, {"pipelines", "training"}, {"core"}]
