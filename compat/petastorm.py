"""Petastorm 0.13.1 (its last release, 2023) made to fit the current stack, and its traps that bigtrain hits fixed.

``install()`` must run before the first ``import petastorm`` of a process; it is idempotent. bigtrain calls it
wherever it imports Petastorm: the Spark driver (``pipelines``), executors (the same modules, shipped by
``make dist``), readers on training nodes, and Petastorm's own process-pool workers (started through
``compat/petastorm_worker.py``, see below). On the previous stack (pyarrow 14, numpy 1, Python 3.11) the
compatibility patches find nothing to do and only the fixes apply. In a venv built by ``make setup`` a plain
``import petastorm`` runs ``install()`` first (the import hook of ``compat/petastorm_hook.py``), so users' own
Petastorm code needs no call.

**Compatibility** (each patch applies only where the stack lacks what Petastorm calls):

1. ``pyarrow.filesystem`` (gone in pyarrow 15; ``petastorm/utils.py`` imports ``LocalFileSystem`` from it) and
2. ``pyarrow.hdfs`` (gone; ``petastorm/hdfs/namenode.py``) are stand-in modules during Petastorm's import only:
   ``LocalFileSystem`` is fsspec's, and ``pyarrow.hdfs.connect`` raises, naming the way that works (hdfs through
   fsspec/pyarrow.fs, or the previous stack).
3. ``distutils`` (gone in Python 3.12; ``LooseVersion`` in ``namenode.py``): a stand-in ``distutils.version``
   during the import, when no ``distutils`` (setuptools' shim) is importable.
4. ``pyarrow.localfs`` (gone; ``fs_utils.FilesystemResolver`` for ``file://``): fsspec's local file system, given
   to ``fs_utils`` only.
5. The legacy ``pq.ParquetDataset(path, filesystem=, validate_schema=, metadata_nthreads=, filters=)`` with its
   ``paths``, ``fs``, ``pieces``, ``metadata``, ``common_metadata`` and ``partitions``, and
6. ``pq.ParquetDatasetPiece`` (``read``, ``get_metadata``): ``LegacyParquetDataset`` and ``LegacyPiece`` below,
   given to Petastorm's modules as their ``pq`` (a proxy of ``pyarrow.parquet`` with these two names). Files are
   listed as the legacy manifest did (sorted; ``_``/``.`` names, ``.crc`` and ``_SUCCESS`` skipped).
   Hive-partitioned folders (``key=value``) are refused with a clear error: bigtrain writes none.
7. ``np.unicode_`` / ``np.string_`` (gone in numpy 2; ``unischema.py``, ``arrow_reader_worker.py``): a proxy of
   numpy with the two aliases, given to those modules only; numpy itself is left alone.
8. The Unischema pickle in ``_common_metadata`` names ``pyspark.sql.types``: where pyspark is not installed (a
   GPU node), Petastorm's restricted unpickler gets placeholders for those types, enough for ``make_reader``.
   bigtrain's own readers never load that pickle (``arrow_schema_only``).
9. OpenCV 5 warns on every PNG that ``CompressedImageCodec.encode`` writes, because it passes JPEG's quality
   flag whatever the format ("imencodeWithMetadata An unsupported key(1) was specified"): the flag goes with
   JPEG only. The PNG bytes are the same (PNG never read that flag).

The module stand-ins of 4, 5 and 7 pickle as references: unpickled, each is the stand-in of the unpickling
process, which installs this layer first. Spark's cloudpickle ships Petastorm's closures by value with the globals
they name (``materialize_dataset`` counts row groups on executors with a file system factory naming ``pyarrow``).

**Fixes to Petastorm's behaviour** (on every stack):

- *The early end*: ``ThreadPool.get_results`` decides that reading is over with two checks made one after the
  other (all workers done, then the ventilator completed). Evaluated around the ventilator's last hand-out, the
  reader ends at once: an epoch of zero rows with no error (docs/stack.md; reproduced at 5 in 200 reads on two busy
  cores; uber/petastorm#71, closed as not reproducible).
- *Order depending on timing*: with more than one worker, ``current_worker_done`` skips a worker that the
  ventilator has not fed yet, so a seeded read's order changes from run to run (4 in 30 reads, docs/stack.md).
  ``OrderedEndThreadPool`` counts a worker as done only once the ventilator has finished: both are fixed.
- *``seed=0`` meaning unseeded*: the thread pool, the ventilator and the Arrow worker test ``seed != 0``, so a
  seed of 0 shuffles at random and busy-polls the result queue. Here 0 is a seed like any other (the same
  generators, seeded with 0).
- *The pickled schema*: inside ``arrow_schema_only()`` the stored Unischema counts as absent, so Petastorm builds
  its schema from the Parquet files' Arrow schema and never unpickles ``_common_metadata`` (which needs pyspark,
  and runs code of whoever can write to the dataset's folder).
- *Process-pool workers* are new Python processes that import Petastorm before anything else: they are started
  through ``compat.petastorm_worker``, which installs this layer first, with the project on their ``PYTHONPATH``.

When Petastorm releases a version that runs on current pyarrow and numpy: pin it, and delete patches 1-7 (the
tests in ``tests/compat/test_petastorm.py`` name each one); keep the fixes for as long as its thread pool is the same.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
import subprocess
import sys
import types
from tempfile import mkstemp

_installed = False
# True while install() imports Petastorm: the import hook (compat/petastorm_hook.py) lets that import through.
_installing = False
# Filled by install(): which compatibility patches this stack needed (tests and `make setup` print them).
APPLIED: list[str] = []


def _needs(module: str) -> bool:
    """True when ``module`` cannot be imported (found without importing it, where its package allows)."""
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError, AttributeError):  # its parent package is missing, or blocked (None)
        return True


# --- patches 1-3: stand-in modules while Petastorm is imported -----------------------------------------------------

class _HdfsGone:
    """``pyarrow.hdfs.HadoopFileSystem`` of the stand-in module: pyarrow >= 15 has no legacy HDFS client."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("pyarrow.hdfs (Petastorm's HDFS client) was removed in pyarrow 15: read hdfs:// "
                           "datasets with bigtrain's loader (pyarrow.fs), or use the previous stack "
                           "(make setup STACK=spark35)")


def _hdfs_connect(*args, **kwargs):
    return _HdfsGone()


class _LooseVersion:
    """``distutils.version.LooseVersion`` for the comparisons Petastorm makes of version strings."""

    def __init__(self, text: str):
        import re
        self.vstring = str(text)
        self.version = [int(p) if p.isdigit() else p for p in re.split(r"[._+\-]|(?<=\d)(?=[a-z])", self.vstring)
                        if p]

    def _key(self, other):
        other = other if isinstance(other, _LooseVersion) else _LooseVersion(other)
        pairs = [(a, b) for a, b in zip(self.version, other.version)]
        for a, b in pairs:
            if a != b:
                return (a > b) - (a < b) if type(a) is type(b) else (str(a) > str(b)) - (str(a) < str(b))
        return (len(self.version) > len(other.version)) - (len(self.version) < len(other.version))

    def __lt__(self, other): return self._key(other) < 0
    def __le__(self, other): return self._key(other) <= 0
    def __gt__(self, other): return self._key(other) > 0
    def __ge__(self, other): return self._key(other) >= 0
    def __eq__(self, other): return self._key(other) == 0
    def __hash__(self): return hash(self.vstring)


def _stand_ins() -> dict[str, types.ModuleType]:
    import fsspec.implementations.local

    modules = {}
    if _needs("pyarrow.filesystem"):
        fs_module = types.ModuleType("pyarrow.filesystem", "bigtrain stand-in for Petastorm's import")
        fs_module.LocalFileSystem = fsspec.implementations.local.LocalFileSystem
        fs_module.FileSystem = fsspec.AbstractFileSystem
        modules["pyarrow.filesystem"] = fs_module
        APPLIED.append("pyarrow.filesystem")
    if _needs("pyarrow.hdfs"):
        hdfs_module = types.ModuleType("pyarrow.hdfs", "bigtrain stand-in for Petastorm's import")
        hdfs_module.HadoopFileSystem = _HdfsGone
        hdfs_module.connect = _hdfs_connect
        modules["pyarrow.hdfs"] = hdfs_module
        APPLIED.append("pyarrow.hdfs")
    if _needs("distutils.version"):
        distutils = types.ModuleType("distutils", "bigtrain stand-in for Petastorm's import")
        version = types.ModuleType("distutils.version", "bigtrain stand-in for Petastorm's import")
        version.LooseVersion = _LooseVersion
        distutils.version = version
        modules["distutils"] = distutils
        modules["distutils.version"] = version
        APPLIED.append("distutils")
    return modules


@contextlib.contextmanager
def _importing_petastorm():
    global _installing
    _installing = True
    try:
        yield
    finally:
        _installing = False


@contextlib.contextmanager
def _modules_during_import(modules: dict[str, types.ModuleType]):
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


# --- patches 5-6: the legacy ParquetDataset and ParquetDatasetPiece on today's pyarrow ------------------------------

_EXCLUDED = ("_SUCCESS",)


def _private(name: str) -> bool:
    return name.startswith(("_", ".")) or name.endswith((".crc", "_$folder$")) or name in _EXCLUDED


class LegacyPiece:
    """``pq.ParquetDatasetPiece`` as Petastorm uses it: a file, or one row group of it."""

    def __init__(self, path, open_file_func=None, file_options=None, row_group=None, partition_keys=None):
        self.path = path
        self.open_file_func = open_file_func
        self.row_group = row_group
        self.partition_keys = partition_keys or []

    def _open(self):
        if self.open_file_func is None:
            return open(self.path, "rb")
        return self.open_file_func(self.path)

    def get_metadata(self):
        import pyarrow.parquet as pq
        with self._open() as fh:
            return pq.ParquetFile(fh).metadata

    def read(self, columns=None, use_threads=True, partitions=None, file=None, use_pandas_metadata=False):
        import pyarrow.parquet as pq
        if partitions is not None or self.partition_keys:
            raise NotImplementedError("bigtrain's Petastorm compatibility layer reads no partitioned datasets")
        with (contextlib.nullcontext(file) if file is not None else self._open()) as fh:
            reader = pq.ParquetFile(fh)
            if columns is not None:
                columns = list(columns)
            if self.row_group is not None:
                return reader.read_row_group(self.row_group, columns=columns, use_threads=use_threads,
                                             use_pandas_metadata=use_pandas_metadata)
            return reader.read(columns=columns, use_threads=use_threads, use_pandas_metadata=use_pandas_metadata)

    def __eq__(self, other):
        return isinstance(other, LegacyPiece) and (self.path, self.row_group) == (other.path, other.row_group)

    def __hash__(self):
        return hash((self.path, self.row_group))

    def __repr__(self):
        return f"LegacyPiece({self.path!r}, row_group={self.row_group})"


class LegacyParquetDataset:
    """``pq.ParquetDataset`` of pyarrow < 15 (``use_legacy_dataset=True``) as Petastorm 0.13.1 uses it, on an
    fsspec file system (Petastorm's ``FilesystemResolver`` gives one for every scheme)."""

    def __init__(self, path_or_paths, filesystem=None, schema=None, metadata=None, split_row_groups=False,
                 validate_schema=True, filters=None, metadata_nthreads=None, read_dictionary=None,
                 memory_map=False, buffer_size=0, partitioning="hive", use_legacy_dataset=None,
                 pre_buffer=True, coerce_int96_timestamp_unit=None, thrift_string_size_limit=None,
                 thrift_container_size_limit=None):
        import fsspec.implementations.local
        if filesystem is None:
            filesystem = fsspec.implementations.local.LocalFileSystem()
        self.fs = filesystem
        self.paths = path_or_paths
        self._filters = filters
        self.metadata_path = self.common_metadata_path = None
        self.partitions = None
        if isinstance(path_or_paths, (list, tuple)):
            files = sorted(str(p) for p in path_or_paths)
        elif self.fs.isfile(path_or_paths):
            files = [str(path_or_paths)]
        else:
            files = self._visit(str(path_or_paths).rstrip("/") or "/")
        self.pieces = [LegacyPiece(f, open_file_func=self.fs.open) for f in files]
        self._metadata = metadata
        self._common_metadata = None
        self._read_common = self.common_metadata_path is not None

    def _visit(self, base: str) -> list[str]:
        files, folders = [], []
        for entry in self.fs.ls(base, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            full = base.rstrip("/") + "/" + name
            if entry["type"] == "directory":
                if not name.startswith(("_", ".")):
                    folders.append(full)
            elif name.endswith("_common_metadata"):
                self.common_metadata_path = full
            elif name.endswith("_metadata"):
                self.metadata_path = full
            elif not _private(name):
                files.append(full)
        if folders:
            raise NotImplementedError(
                f"{base}: sub-folders {[f.rsplit('/', 1)[-1] for f in sorted(folders)][:3]} (a partitioned "
                "dataset); bigtrain's Petastorm compatibility layer reads flat datasets only")
        return sorted(files)

    def _read_metadata(self, path):
        import pyarrow.parquet as pq
        with self.fs.open(path, "rb") as fh:
            return pq.read_metadata(fh)

    @property
    def common_metadata(self):
        if self._read_common:
            self._common_metadata = self._read_metadata(self.common_metadata_path)
            self._read_common = False
        return self._common_metadata

    @property
    def metadata(self):
        if self._metadata is None and self.metadata_path is not None:
            self._metadata = self._read_metadata(self.metadata_path)
        return self._metadata

    @property
    def schema(self):
        source = self.common_metadata or self.metadata or (self.pieces[0].get_metadata() if self.pieces else None)
        return None if source is None else source.schema


def _proxy(key: str) -> types.ModuleType:
    """The module stand-in ``key`` of this process, after ``install()``: how a pickled stand-in comes back. Spark's
    cloudpickle ships Petastorm's closures by value with the globals they name, stand-ins included (e.g.
    ``materialize_dataset``'s row-group count, whose file system factory names ``fs_utils.pyarrow``)."""
    install()
    return _PROXIES[key]


class _PicklableModule(types.ModuleType):
    """A module stand-in that pickles as a reference to the same stand-in in the unpickling process."""

    def __reduce__(self):
        return _proxy, (self._bigtrain_key,)


_PROXIES: dict[str, types.ModuleType] = {}


def _register(key: str, module: _PicklableModule) -> _PicklableModule:
    module._bigtrain_key = key
    _PROXIES[key] = module
    return module


class _ParquetModule(_PicklableModule):
    """``pyarrow.parquet`` with the two legacy names Petastorm calls."""

    def __init__(self):
        super().__init__("pyarrow.parquet", "pyarrow.parquet for Petastorm (bigtrain compat)")
        self.ParquetDataset = LegacyParquetDataset
        self.ParquetDatasetPiece = LegacyPiece

    def __getattr__(self, name):
        import pyarrow.parquet
        return getattr(pyarrow.parquet, name)


class _NumpyModule(_PicklableModule):
    """numpy with ``unicode_``/``string_`` (numpy 1's names of ``str_``/``bytes_``)."""

    def __init__(self):
        import numpy
        super().__init__("numpy", "numpy for Petastorm (bigtrain compat)")
        self.unicode_ = numpy.str_
        self.string_ = numpy.bytes_

    def __getattr__(self, name):
        import numpy
        return getattr(numpy, name)


class _PyarrowModule(_PicklableModule):
    """pyarrow with the legacy names a Petastorm module calls: ``localfs`` (``file://``), ``hdfs``."""

    def __init__(self, **names):
        super().__init__("pyarrow", "pyarrow for Petastorm (bigtrain compat)")
        self.__dict__.update(names)

    def __getattr__(self, name):
        import pyarrow
        return getattr(pyarrow, name)


# --- patch 8: Spark types in the stored Unischema where pyspark is not installed ----------------------------------

class SparkTypePlaceholder:
    """Stands for a ``pyspark.sql.types`` type in an unpickled Unischema on a node without pyspark."""

    def __repr__(self):
        return f"{type(self).__name__}()"


def _spark_placeholder(name: str) -> type:
    cls = _SPARK_PLACEHOLDERS.get(name)
    if cls is None:
        cls = _SPARK_PLACEHOLDERS[name] = type(name, (SparkTypePlaceholder,), {"__module__": __name__})
    return cls


_SPARK_PLACEHOLDERS: dict[str, type] = {}


# --- the fixes --------------------------------------------------------------------------------------------------

_ARROW_SCHEMA_ONLY = contextvars.ContextVar("bigtrain_arrow_schema_only", default=False)


@contextlib.contextmanager
def arrow_schema_only():
    """Readers made inside this block (in this thread) take their schema from the Parquet files' Arrow schema
    and never unpickle the one stored in the dataset."""
    token = _ARROW_SCHEMA_ONLY.set(True)
    try:
        yield
    finally:
        _ARROW_SCHEMA_ONLY.reset(token)


class _SeedZero(int):
    """The seed 0, which Petastorm's ``seed != 0`` tests take for a seed (the generators get the int 0)."""

    def __eq__(self, other):
        return False if other == 0 and type(other) is int else int.__eq__(self, other)

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = int.__hash__


def _worker_pythonpath() -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    current = os.environ.get("PYTHONPATH", "")
    return here if not current else here + os.pathsep + current


def _exec_in_new_process(func, *args, **kwargs):
    """Petastorm's ``exec_in_new_process``, but the new process installs this layer before importing Petastorm."""
    import dill
    handle, runnable = mkstemp(suffix="runnable")
    with os.fdopen(handle, "wb") as fh:
        dill.dump((func, args, kwargs), fh)
    env = dict(os.environ, PYTHONPATH=_worker_pythonpath())
    return subprocess.Popen([sys.executable, "-m", "compat.petastorm_worker", runnable], executable=sys.executable,
                            env=env)


def install() -> None:
    """Make Petastorm 0.13.1 importable and correct on this stack (see the module's docstring); idempotent.
    Call it before the first ``import petastorm``: afterwards it is too late for the import-time patches."""
    global _installed
    if _installed:
        return
    if "petastorm" in sys.modules and not getattr(sys.modules["petastorm"], "_bigtrain_compat", False):
        raise RuntimeError("petastorm was imported before compat.petastorm.install(): call install() first")
    stand_ins = _stand_ins()
    with _modules_during_import(stand_ins), _importing_petastorm():
        import petastorm
        import petastorm.etl.dataset_metadata  # noqa: F401  (every module below, while the stand-ins are there)
        import petastorm.etl.legacy
        import petastorm.fs_utils
        import petastorm.reader
        import petastorm.unischema
        import petastorm.utils
        import petastorm.arrow_reader_worker
        import petastorm.py_dict_reader_worker
        import petastorm.workers_pool.process_pool
        import petastorm.workers_pool.thread_pool
        import petastorm.workers_pool.ventilator
        import petastorm.etl.rowgroup_indexing
        import petastorm.etl.metadata_util
        import petastorm.hdfs.namenode
    petastorm._bigtrain_compat = True
    import fsspec.implementations.local
    import pyarrow
    import pyarrow.parquet
    if not hasattr(pyarrow, "localfs"):
        petastorm.fs_utils.pyarrow = _register(
            "fs_utils.pyarrow", _PyarrowModule(localfs=fsspec.implementations.local.LocalFileSystem()))
        APPLIED.append("pyarrow.localfs")
    if "pyarrow.hdfs" in stand_ins:
        petastorm.hdfs.namenode.pyarrow = _register("namenode.pyarrow", _PyarrowModule(hdfs=stand_ins["pyarrow.hdfs"]))
    if not hasattr(pyarrow.parquet, "ParquetDatasetPiece"):
        parquet = _register("parquet", _ParquetModule())
        for module in (petastorm.etl.dataset_metadata, petastorm.reader, petastorm.arrow_reader_worker,
                       petastorm.py_dict_reader_worker, petastorm.etl.rowgroup_indexing, petastorm.etl.metadata_util):
            module.pq = parquet
        APPLIED.append("pq.ParquetDataset")
    import numpy
    if not hasattr(numpy, "unicode_"):
        aliases = _register("numpy", _NumpyModule())
        for module in (petastorm.unischema, petastorm.arrow_reader_worker):
            module.np = aliases
        APPLIED.append("numpy aliases")
    _fit_png_encoding(petastorm)
    if _needs("pyspark.sql.types"):
        _install_spark_placeholders(petastorm.etl.legacy)
        APPLIED.append("spark types")
    _install_fixes(petastorm)
    _installed = True


def _fit_png_encoding(petastorm) -> None:
    try:
        import cv2
    except ImportError:
        return
    if int(cv2.__version__.split(".")[0]) < 5:
        return
    import petastorm.codecs as codecs

    released = codecs.CompressedImageCodec.encode

    def encode(self, unischema_field, value):
        if self._image_codec in (".jpg", ".jpeg"):
            return released(self, unischema_field, value)
        # Petastorm 0.13.1's checks and colour order, then imencode without JPEG's quality flag.
        if unischema_field.numpy_dtype != value.dtype:
            raise ValueError(f"Unexpected type of {unischema_field.name} feature, expected "
                             f"{unischema_field.numpy_dtype}, got {value.dtype}")
        if not codecs._is_compliant_shape(value.shape, unischema_field.shape):
            raise ValueError(f"Unexpected dimensions of {unischema_field.name} feature, expected "
                             f"{unischema_field.shape}, got {value.shape}")
        if len(value.shape) == 3 and value.shape[2] == 3:
            value = value[:, :, (2, 1, 0)]
        elif len(value.shape) != 2:
            raise ValueError("Unexpected image dimensions. Supported dimensions are (H, W) or (H, W, 3). "
                             f"Got {value.shape}")
        _, contents = cv2.imencode(self._image_codec, value)
        return bytearray(contents)

    codecs.CompressedImageCodec.encode = encode
    APPLIED.append("opencv 5 png")


def _install_spark_placeholders(legacy) -> None:
    base = legacy.RestrictedUnpickler

    class Unpickler(base):
        def find_class(self, module, name):
            if module.split(".")[0] == "pyspark":
                return _spark_placeholder(name)
            return super().find_class(module, name)

    legacy.RestrictedUnpickler = Unpickler


def _install_fixes(petastorm) -> None:
    from petastorm.etl import dataset_metadata
    from petastorm.workers_pool import process_pool, thread_pool, ventilator
    import petastorm.arrow_reader_worker as arrow_worker

    class OrderedEndThreadPool(thread_pool.ThreadPool):
        """Petastorm's thread pool, where a worker is done only once the ventilator has finished."""

        def __init__(self, workers_count, results_queue_size=50, profiling_enabled=False, shuffle_rows=False,
                     seed=None):
            super().__init__(workers_count, results_queue_size, profiling_enabled, shuffle_rows,
                             _SeedZero(0) if seed is not None and seed == 0 else seed)

        def current_worker_done(self, worker_id):
            vent = self._ventilator
            if vent is not None and not vent.completed():
                return False
            return super().current_worker_done(worker_id)

    seeded_init = ventilator.ConcurrentVentilator.__init__

    def ventilator_init(self, *args, **kwargs):
        seeded_init(self, *args, **kwargs)
        if self._random_seed is not None and type(self._random_seed) is not _SeedZero and self._random_seed == 0:
            self._random_seed = _SeedZero(0)

    ventilator.ConcurrentVentilator.__init__ = ventilator_init

    arrow_init = arrow_worker.ArrowReaderWorker.__init__

    def arrow_worker_init(self, worker_id, publish_func, args):
        arrow_init(self, worker_id, publish_func, args)
        if self._random_seed is not None and type(self._random_seed) is not _SeedZero and self._random_seed == 0:
            self._random_seed = _SeedZero(0)

    arrow_worker.ArrowReaderWorker.__init__ = arrow_worker_init

    stored_schema = dataset_metadata.get_schema

    def get_schema(dataset):
        if _ARROW_SCHEMA_ONLY.get():
            raise dataset_metadata.PetastormMetadataError(
                "bigtrain reads the schema from the Parquet files, not from the pickle in _common_metadata")
        return stored_schema(dataset)

    dataset_metadata.get_schema = get_schema
    petastorm.reader.ThreadPool = OrderedEndThreadPool
    thread_pool.OrderedEndThreadPool = OrderedEndThreadPool
    process_pool.exec_in_new_process = _exec_in_new_process
