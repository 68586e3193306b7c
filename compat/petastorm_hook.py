"""A plain ``import petastorm`` with bigtrain's compatibility layer (``compat/petastorm.py``) applied first.

``make setup`` runs ``python -m compat.petastorm_hook``, which copies this file into the venv's site-packages as
``_bigtrain_petastorm_hook.py`` with ``bigtrain_petastorm_compat.pth``, whose line registers ``PetastormFinder``
at every interpreter start. On the first ``import petastorm`` of a process the finder's loader runs
``compat.petastorm.install()``, which imports Petastorm under its patches, and hands that module to the import.

Why a copy in site-packages, and why this file imports nothing but ``os`` and ``sys`` at its top: the ``.pth``
runs in every process of the venv, so it must cost nothing (pyarrow, numpy and bigtrain's own ``compat`` package
wait for Petastorm's import) and must not fail where bigtrain is gone: where ``compat.petastorm`` cannot be
imported, Petastorm imports as released (the error it raises on the current stack says so).

A ``.pth`` inside the zip that ``spark-submit --py-files`` ships is never read. Executors whose Python is a
``make setup`` venv have the hook; another node Python gets it with
``PYTHONPATH=dist/bigtrain-src.zip python -m compat.petastorm_hook`` (the hook then finds ``compat.petastorm`` in
the zip that Spark puts on the executors' path). bigtrain's own code calls ``install()`` itself and needs neither.

``BIGTRAIN_PETASTORM_HOOK=0`` at interpreter start leaves ``import petastorm`` alone (Petastorm as released).
"""
import os
import sys

LAYER = "compat.petastorm"  # imported by name when Petastorm is, never at interpreter start
HOOK_MODULE = "_bigtrain_petastorm_hook"  # this file's name in site-packages
PTH_FILE = "bigtrain_petastorm_compat.pth"
OPT_OUT = "BIGTRAIN_PETASTORM_HOOK"


class PetastormFinder:
    """First on ``sys.meta_path``: finds ``petastorm`` where the other finders do, with a loader that installs
    the compatibility layer first. Every other name costs one comparison."""

    bigtrain_petastorm_hook = True  # how register() recognises one already there, whichever copy made it

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "petastorm" or _layer_installing():
            return None  # install() itself imports Petastorm: through the usual finders
        spec = _spec_of_other_finders(self, fullname, path, target)
        if spec is None or spec.loader is None:
            return None  # not installed (or a namespace package): the usual error, from the usual finders
        spec.loader = InstallLayerFirst(spec.loader)
        return spec


class InstallLayerFirst:
    """Petastorm's own loader, preceded by ``compat.petastorm.install()``."""

    def __init__(self, loader):
        self.loader = loader
        self.layer = None  # compat.petastorm, where importable
        self.installed = None  # the module install() imported, under its patches
        self.installed_spec = None

    def create_module(self, spec):
        self.layer = _import_layer()
        if self.layer is not None:
            self.layer.install()
            self.installed = sys.modules.get(spec.name)
        if self.installed is None:
            return self.loader.create_module(spec)
        self.installed_spec = self.installed.__spec__
        return self.installed  # the import system then runs exec_module on it: nothing left to run

    def exec_module(self, module):
        if module is self.installed:
            module.__spec__ = self.installed_spec  # the import system set it to the spec this finder returned
            return
        module.__loader__ = module.__spec__.loader = self.loader
        try:
            self.loader.exec_module(module)
        except ImportError as error:
            if self.layer is None:
                error.add_note(f"petastorm was imported without bigtrain's compatibility layer: {LAYER} is not "
                               "importable in this process (put bigtrain, or dist/bigtrain-src.zip, on its path)")
            raise


def _layer_installing() -> bool:
    layer = sys.modules.get(LAYER)
    return bool(getattr(layer, "_installing", False))


def _spec_of_other_finders(finder, fullname, path, target):
    for other in sys.meta_path:
        find_spec = getattr(other, "find_spec", None)
        if other is finder or getattr(other, "bigtrain_petastorm_hook", False) or find_spec is None:
            continue
        spec = find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


def _import_layer():
    """``compat.petastorm``, or None where bigtrain is not importable (uninstalled after the hook was, or a node
    Python without the zip on its path)."""
    import importlib

    try:
        return importlib.import_module(LAYER)
    except ModuleNotFoundError as error:
        if error.name not in ("compat", LAYER):
            raise  # a module the layer needs is missing: that is the error to see
        return None


def register() -> None:
    """Put the finder first on ``sys.meta_path`` (what the ``.pth`` runs at start); idempotent."""
    if os.environ.get(OPT_OUT) == "0":
        return
    if not any(getattr(f, "bigtrain_petastorm_hook", False) for f in sys.meta_path):
        sys.meta_path.insert(0, PetastormFinder())


# --- installing the hook into a site-packages folder (make setup; a node's Python, from the zip) ----------------

def install_into(site_dir: str) -> list[str]:
    """Write this file as ``HOOK_MODULE`` and the ``.pth`` that registers it into ``site_dir``. Rerunning rewrites
    both, each replaced in one step: interpreters of the same venv may start meanwhile. Returns the paths."""
    if not os.path.isdir(site_dir):
        raise FileNotFoundError(f"site-packages folder {site_dir!r} does not exist")
    spec = sys.modules[__name__].__spec__
    source = spec.loader.get_data(spec.origin)  # works from the zip shipped with --py-files too
    module = _replace(os.path.join(site_dir, HOOK_MODULE + ".py"), source)
    _compile(module)
    line = f"import {HOOK_MODULE}; {HOOK_MODULE}.register()\n"
    return [module, _replace(os.path.join(site_dir, PTH_FILE), line.encode())]


def _replace(path: str, data: bytes) -> str:
    partial = f"{path}.{os.getpid()}.tmp"  # no .pth suffix: site never reads a half-written one
    with open(partial, "wb") as fh:
        fh.write(data)
    os.replace(partial, path)
    return path


def _compile(module: str) -> None:
    """Its bytecode now: an interpreter that may not write it (PYTHONDONTWRITEBYTECODE, a read-only site-packages)
    would compile the module at every start."""
    import py_compile

    py_compile.compile(module, doraise=True)


def main(argv: list[str]) -> None:
    import sysconfig

    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        sys.exit(f"usage: python -m compat.petastorm_hook [SITE_PACKAGES] (got {' '.join(argv)!r})")
    site_dir = argv[0] if argv else sysconfig.get_paths()["purelib"]
    written = install_into(site_dir)
    print(f"petastorm import hook: {' and '.join(os.path.basename(p) for p in written)} in {site_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
