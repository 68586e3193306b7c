"""The layers of ARCHITECTURE.md, enforced over the import graph. An import is an ``import`` or ``from ... import``
statement, at the top of a file or inside a function, or a call of ``importlib.import_module`` or ``__import__``
whose first argument is a constant string (a computed name, as in ``jobs/cli.py``'s subcommand table, is not
checked; neither is ``runpy.run_module``, which runs a module as a program: ``compat/petastorm_worker.py``).

Imports of the project's own modules:
- every one points down the layers (or stays inside its package);
- the two middle packages, pipelines (Spark) and training (PyTorch), never import each other;
- a job does not import another job (``jobs.common`` and ``jobs.cli`` are shared);
- a function-level import of a project module is only for one that pulls in a heavy optional dependency.

Imports of third-party modules (engines stay where they run):
- ``core`` and ``dataset`` import at the top of a file only the standard library and PyYAML (pyarrow, fsspec and
  the like wait inside the functions that use them), and never pyspark, torch, horovod or petastorm;
- ``compat`` never imports pyspark, torch or horovod, and imports petastorm only inside ``install()`` and the
  module-level functions of its module that ``install()`` calls by name, directly or in turn (Petastorm is
  patched before its first import);
- ``pipelines`` never imports torch or horovod;
- ``training`` imports pyspark (and ``horovod.spark``, which imports it) only inside the functions of
  ``training/spark_launch.py``, the module that launches ranks on Spark: every other training module imports on a
  GPU node without Spark or Java.

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
# Engines a package must not import at all: the contract and the base run on every host; the Spark side runs on
# executors without torch.
NEVER = {"core": {"pyspark", "torch", "horovod", "petastorm"}, "dataset": {"pyspark", "torch", "horovod", "petastorm"},
         "pipelines": {"torch", "horovod"}, "compat": {"pyspark", "torch", "horovod"}}
# Every process imports these two (driver, executors, GPU nodes, `bigtrain --help`): at their top only what every
# host has, the standard library and PyYAML.
STDLIB_AT_TOP = {"core", "dataset"}
LIGHT_AT_TOP = set(sys.stdlib_module_names) | {"yaml"}
PETASTORM_INSTALLER = "install"  # compat patches Petastorm's imports in it, so Petastorm is imported nowhere before
SPARK_LAUNCHERS = {"training.spark_launch"}  # the training modules whose functions may import pyspark
DYNAMIC_IMPORTS = {"import_module", "__import__"}  # importlib.import_module(name), import_module(name), __import__
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


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
    target: str        # imported module: a project one (dataset.info) or a third-party one (pyspark.sql)
    line: int
    in_function: bool
    function: str = ""  # the module-level function it runs in; "" at the top of the file or in a class

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


def _called_name(call: ast.Call) -> str:
    """How a call names its function: ``f`` of ``f(...)`` and of ``m.f(...)``."""
    if isinstance(call.func, ast.Name):
        return call.func.id
    return call.func.attr if isinstance(call.func, ast.Attribute) else ""


def _imported_names(node: ast.AST) -> list[str]:
    """The modules an import statement loads, or a dynamic import of a constant name (relative ones are skipped)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [f"{node.module}.{alias.name}" for alias in node.names]
    if isinstance(node, ast.Call) and _called_name(node) in DYNAMIC_IMPORTS and node.args:
        name = node.args[0]
        if isinstance(name, ast.Constant) and isinstance(name.value, str) and not name.value.startswith("."):
            return [name.value]
    return []


def imports_of(module: str, tree: ast.Module, modules: dict[str, Path]) -> tuple[list[Import], list[Import]]:
    """(imports of project modules, imports of third-party modules) of one file."""
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, FUNCTIONS) for n in ast.walk(f)}
    owner = {id(n): top.name for top in tree.body if isinstance(top, FUNCTIONS) for n in ast.walk(top)}
    project, third_party = [], []
    for node in ast.walk(tree):
        for name in _imported_names(node):
            target = _resolve(name, modules)
            found = Import(module, target or name, node.lineno, id(node) in in_function, owner.get(id(node), ""))
            if target is None:
                third_party.append(found)
            elif target != module:
                project.append(found)
    return project, third_party


def reached_from(tree: ast.Module, entry: str) -> set[str]:
    """The module-level functions that running ``entry`` runs: itself, and those it calls by name, in turn."""
    calls = {top.name: {n.func.id for n in ast.walk(top) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
             for top in tree.body if isinstance(top, FUNCTIONS)}
    reached, pending = set(), [entry]
    while pending:
        name = pending.pop()
        if name in calls and name not in reached:
            reached.add(name)
            pending.extend(calls[name])
    return reached


def _loads_spark(name: str) -> bool:
    return name.split(".")[0] == "pyspark" or f"{name}.".startswith("horovod.spark.")


def engine_problem(imp: Import, installer: set[str]) -> str | None:
    """Why a third-party import breaks "engines stay where they run" (``installer``: what install() runs), or None."""
    package, engine = imp.source.split(".")[0], imp.target.split(".")[0]
    if engine in NEVER.get(package, ()):
        return f"{package} must run where {engine} is not installed"
    if package in STDLIB_AT_TOP and not imp.in_function and engine not in LIGHT_AT_TOP:
        return f"{package} loads only the standard library and PyYAML at import time: import {engine} where it is used"
    if package == "compat" and engine == "petastorm" and imp.function not in installer:
        return (f"compat imports petastorm only inside {PETASTORM_INSTALLER}() and the functions it calls "
                "(its imports are patched there)")
    if package == "training" and _loads_spark(imp.target) and not (imp.in_function and imp.source in SPARK_LAUNCHERS):
        return (f"training imports pyspark only inside the functions of {', '.join(sorted(SPARK_LAUNCHERS))} "
                "(GPU nodes have no Spark)")
    return None


def layer_of(module: str, layers: list[set[str]]) -> int:
    package = module.split(".")[0]
    for rank, packages in enumerate(reversed(layers)):
        if package in packages:
            return rank
    raise AssertionError(f"{module}: package {package} is in no layer of ARCHITECTURE.md")


def layer_problems(imp: Import, layers: list[set[str]], heavy: dict[str, bool]) -> list[str]:
    """Why an import of a project module breaks the layers, the job rule or the function-level rule."""
    source_package, target_package = imp.source.split(".")[0], imp.target.split(".")[0]
    problems = []
    if source_package != target_package:
        up, down = layer_of(imp.source, layers), layer_of(imp.target, layers)
        if down > up:
            problems.append(f"upward, {target_package} is a higher layer than {source_package}")
        elif down == up:
            problems.append(f"sideways, {source_package} and {target_package} are independent")
    elif source_package == "jobs" and not {imp.source, imp.target} & SHARED_JOB_MODULES:
        problems.append("one job imports another (move what they share down a layer)")
    if imp.in_function and not heavy[imp.target]:
        problems.append(f"{imp.target} is light (no {', '.join(sorted(HEAVY))} at its top): "
                        "import it at the top of the file")
    return problems


def violations(root: Path, layers: list[set[str]]) -> list[str]:
    """Every import that breaks the rules, as a sentence naming the file, the line and the rule."""
    modules = modules_of(root, set().union(*layers))
    graph, heavy_direct, problems = {}, {}, []
    for module, path in sorted(modules.items()):
        tree = ast.parse(path.read_text(), str(path))
        graph[module], third_party = imports_of(module, tree, modules)
        heavy_direct[module] = any(i.target.split(".")[0] in HEAVY for i in third_party if not i.in_function)
        installer = reached_from(tree, PETASTORM_INSTALLER)
        problems += [f"{imp}: {why}" for imp in third_party if (why := engine_problem(imp, installer))]
    heavy = _heavy_closure(graph, heavy_direct)
    for module, found in sorted(graph.items()):
        problems += [f"{imp}: {why}" for imp in found for why in layer_problems(imp, layers, heavy)]
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


LAYERS = [{"jobs"}, {"inference"}, {"pipelines", "training"}, {"dataset"}, {"compat"}, {"core"}]
CLEAN = {
    "core/__init__.py": "", "core/errors.py": "",
    "core/paths.py": "from __future__ import annotations\nimport os\ndef filesystem():\n    import fsspec\n",
    "core/config.py": "import yaml\nfrom core import errors\n",
    "compat/__init__.py": "",
    "compat/petastorm.py": "import sys\ndef install():\n    import petastorm\n    _fix(petastorm)\n"
                           "def _fix(petastorm):\n    from petastorm.workers_pool import thread_pool\n",
    "dataset/__init__.py": "", "dataset/layout.py": "from core import paths\ndef row_groups():\n    import pyarrow\n",
    "pipelines/__init__.py": "", "pipelines/storage.py": "import pyspark\nfrom dataset import layout\n",
    "training/__init__.py": "", "training/loop.py": "import torch\nfrom dataset.layout import exists\n",
    "training/spark_launch.py": "from training.loop import train\ndef run_on_spark():\n    import horovod.spark\n"
                                "def _run_with_torch_distributor():\n    from pyspark.ml.torch import distributor\n",
    "inference/__init__.py": "", "inference/predict.py": "from pipelines import storage\nfrom training import loop\n",
    "jobs/__init__.py": "", "jobs/common.py": "from core.errors import *\n",
    "jobs/train.py": "from jobs.common import x\ndef run():\n    from training.loop import train\n",
    "jobs/predict.py": "import importlib\ndef run():\n    importlib.import_module(\"inference.predict\")\n",
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
    ({"training/loop.py": "import torch\nfrom pyspark.sql import functions\n"},
     "training.loop:2 imports pyspark.sql.functions (at the top): training imports pyspark only inside"),
    ({"dataset/layout.py": "def f():\n    import torch\n"},
     "dataset.layout:2 imports torch (inside a function): dataset must run where torch is not installed"),
    ({"training/loop.py": "def f():\n    from core import paths\n"},
     "training.loop:2 imports core.paths (inside a function): core.paths is light"),
    # The four that a review planted on a copy of the repository (issue 27), then their neighbours.
    ({"core/paths.py": "import os\nimport pandas\n"},
     "core.paths:2 imports pandas (at the top): core loads only the standard library and PyYAML"),
    ({"compat/petastorm.py": "import petastorm\ndef install():\n    pass\n"},
     "compat.petastorm:1 imports petastorm (at the top): compat imports petastorm only inside install()"),
    ({"training/loop.py": "import torch\ndef train():\n    import pyspark\n"},
     "training.loop:3 imports pyspark (inside a function): training imports pyspark only inside the functions of "
     "training.spark_launch"),
    ({"training/loop.py": "import importlib\nimport torch\n"
                          "def train():\n    importlib.import_module(\"jobs.train\")\n"},
     "training.loop:4 imports jobs.train (inside a function): upward"),
    ({"dataset/layout.py": "import pyarrow.parquet\n"},
     "dataset.layout:1 imports pyarrow.parquet (at the top): dataset loads only the standard library and PyYAML"),
    ({"compat/petastorm.py": CLEAN["compat/petastorm.py"] + "def reader():\n    from petastorm import reader\n"},
     "compat.petastorm:8 imports petastorm.reader (inside a function): compat imports petastorm only inside"),
    ({"training/spark_launch.py": "from pyspark.sql import SparkSession\n"},
     "training.spark_launch:1 imports pyspark.sql.SparkSession (at the top): training imports pyspark only inside"),
    ({"training/loop.py": "import torch\ndef train():\n    from horovod import spark\n"},
     "training.loop:3 imports horovod.spark (inside a function): training imports pyspark only inside"),
    ({"training/loop.py": "import torch\nfrom importlib import import_module\nimport_module(\"pyspark\")\n"},
     "training.loop:3 imports pyspark (at the top): training imports pyspark only inside"),
    ({"dataset/layout.py": "def f():\n    __import__(\"training.loop\")\n"},
     "dataset.layout:2 imports training.loop (inside a function): upward"),
])
def test_the_check_fails_on_a_planted_import(tmp_path, planted, expected):
    problems = violations(_plant(tmp_path, {**CLEAN, **planted}), LAYERS)
    assert any(p.startswith(expected) for p in problems), problems


def test_architecture_md_names_the_places_engines_are_imported():
    text, _ = architecture()
    assert f"`{PETASTORM_INSTALLER}()`" in text, "the compat rule names the function that imports petastorm"
    for module in SPARK_LAUNCHERS:
        assert f"`{module.replace('.', '/')}.py`" in text, f"ARCHITECTURE.md does not name {module}"


def test_the_layers_block_reads_independent_packages(tmp_path):
    assert read_layers("x\n```layers\njobs\npipelines | training   # the middle\ncore\n```\n") == [
        {"jobs"}, {"pipelines", "training"}, {"core"}]
