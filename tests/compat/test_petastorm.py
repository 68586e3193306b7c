"""compat.petastorm on its own: each known failure point of Petastorm 0.13.1 on the current stack, and the fixes
of its traps. ``install()`` changes a process for good, so what depends on the state before it runs in a fresh
interpreter (``fresh``)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compat import petastorm as petastorm_compat
from tests.conftest import REPO, subprocess_env

CURRENT = int(pa.__version__.split(".")[0]) >= 15  # the stack that needs the compatibility patches
only_current = pytest.mark.skipif(not CURRENT, reason="pyarrow < 15 (STACK=spark35): Petastorm runs unpatched")


def fresh(code: str, *, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env or subprocess_env(), capture_output=True,
                          text=True, timeout=120)


def test_each_patch_applies_exactly_where_the_stack_lacks_what_petastorm_calls():
    done = fresh("import json; from compat import petastorm as c; c.install(); print(json.dumps(c.APPLIED))")
    assert done.returncode == 0, done.stderr[-2000:]
    applied = set(json.loads(done.stdout.splitlines()[-1]))
    expected = {"pyarrow.filesystem", "pyarrow.hdfs", "pyarrow.localfs", "pq.ParquetDataset"} if CURRENT else set()
    if not hasattr(np, "unicode_"):
        expected.add("numpy aliases")
    if int(__import__("cv2").__version__.split(".")[0]) >= 5:
        expected.add("opencv 5 png")
    if sys.version_info >= (3, 12) and "distutils" in applied:
        expected.add("distutils")  # absent unless setuptools' shim provides it
    assert applied == expected


@only_current
def test_plain_petastorm_does_not_import_on_this_stack_and_installing_later_is_refused():
    # Petastorm as released (the import hook of compat/petastorm_hook.py left out): what the layer exists for.
    done = fresh("import petastorm", env={**subprocess_env(), "BIGTRAIN_PETASTORM_HOOK": "0"})
    assert done.returncode != 0 and "pyarrow.filesystem" in done.stderr
    # A process that did get Petastorm imported first (here: the stand-ins by hand) is told to install earlier.
    done = fresh("import sys, types; m = types.ModuleType('petastorm'); sys.modules['petastorm'] = m\n"
                 "from compat import petastorm as c\ntry:\n    c.install()\nexcept RuntimeError as e:\n"
                 "    print(e)")
    assert "petastorm was imported before compat.petastorm.install()" in done.stdout


def test_the_distutils_stand_in_compares_versions_as_looseversion_did():
    loose = petastorm_compat._LooseVersion
    assert loose("0.11.1") < loose("0.12.0") < loose("0.17.0") < loose("14.0.2") < loose("26.0.1")
    assert loose("3.5.8") >= "3.0" and not loose("2.4") >= "3.0" and loose("1.14") == loose("1.14")
    assert loose("2.13.0+cpu") > loose("2.13.0")
    # Without any distutils (Python 3.12+ lacking setuptools' shim) Petastorm imports through the stand-in.
    done = fresh("import sys; sys.modules['distutils'] = None; sys.modules['distutils.version'] = None\n"
                 "from compat import petastorm as c; c.install()\n"
                 "import petastorm.hdfs.namenode as n; print('distutils' in c.APPLIED, n.LooseVersion('0.12') < '1')")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["True", "True"]


@only_current
def test_hdfs_through_the_removed_legacy_client_fails_naming_what_works():
    petastorm_compat.install()
    from petastorm.hdfs import namenode

    with pytest.raises(RuntimeError, match="pyarrow.hdfs .* was removed in pyarrow 15.*STACK=spark35"):
        namenode.HdfsConnector.hdfs_connect_namenode(__import__("urllib.parse").parse.urlparse("hdfs://nn:8020/x"))


def test_file_urls_resolve_to_a_working_local_file_system(tmp_path):
    petastorm_compat.install()
    from petastorm.fs_utils import FilesystemResolver

    (tmp_path / "f.txt").write_text("x")
    fs = FilesystemResolver(f"file://{tmp_path}").filesystem()
    assert fs.exists(str(tmp_path / "f.txt")) and not fs.exists(str(tmp_path / "nope"))
    with fs.open(str(tmp_path / "f.txt"), "rb") as fh:
        assert fh.read() == b"x"


def test_petastorm_closures_pickled_by_spark_work_in_a_process_that_never_installed_the_layer(tmp_path):
    # Spark's cloudpickle ships Petastorm's closures by value with the globals they name (materialize_dataset's
    # row-group count: a file system factory naming fs_utils.pyarrow); a stand-in comes back as that process's own.
    petastorm_compat.install()
    import pickle

    from petastorm.fs_utils import FilesystemResolver
    from pyspark import cloudpickle

    for key, proxy in petastorm_compat._PROXIES.items():
        assert pickle.loads(cloudpickle.dumps(proxy)) is proxy, key
    (tmp_path / "f.txt").write_text("x")
    factory = FilesystemResolver(f"file://{tmp_path}").filesystem_factory()
    shipped = tmp_path / "factory.pickle"
    shipped.write_bytes(cloudpickle.dumps(factory))
    done = fresh(f"import pickle; factory = pickle.loads(open({str(shipped)!r}, 'rb').read())\n"
                 f"print(factory().exists({str(tmp_path / 'f.txt')!r}))")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True"]


def write_files(folder, sizes_by_file: dict[str, list[int]]) -> dict[str, list[list[int]]]:
    """Parquet files of the given row-group sizes (values count up through all rows), plus Spark's litter."""
    folder.mkdir(parents=True, exist_ok=True)
    start, values = 0, {}
    for name, sizes in sizes_by_file.items():
        groups = []
        with pq.ParquetWriter(folder / name, pa.schema([("x", pa.int64()), ("s", pa.string())])) as writer:
            for n in sizes:
                xs = list(range(start, start + n))
                writer.write_table(pa.table({"x": xs, "s": [f"v{i}" for i in xs]}))
                groups.append(xs)
                start += n
        values[name] = groups
    for litter in ("_SUCCESS", ".part-0.parquet.crc", "_started_1"):
        (folder / litter).write_bytes(b"")
    return values


def test_the_legacy_dataset_lists_and_reads_files_as_pyarrow_14_did(tmp_path):
    values = write_files(tmp_path / "ds", {"part-1.parquet": [2, 3], "part-0.parquet": [4]})
    pq.write_metadata(pq.read_schema(tmp_path / "ds" / "part-0.parquet").with_metadata({b"k": b"v"}),
                      tmp_path / "ds" / "_common_metadata")
    dataset = petastorm_compat.LegacyParquetDataset(str(tmp_path / "ds"), validate_schema=False,
                                                    metadata_nthreads=10, filters=None)
    assert [p.path.rsplit("/", 1)[-1] for p in dataset.pieces] == ["part-0.parquet", "part-1.parquet"]
    assert dataset.paths == str(tmp_path / "ds") and dataset.partitions is None and dataset.metadata is None
    assert dataset.common_metadata.metadata[b"k"] == b"v"
    piece = petastorm_compat.LegacyPiece(dataset.pieces[1].path, open_file_func=dataset.fs.open, row_group=1)
    assert piece.get_metadata().num_row_groups == 2
    assert piece.read(columns=["x"]).column("x").to_pylist() == values["part-1.parquet"][1]
    assert dataset.pieces[0].read().column("s").to_pylist() == [f"v{i}" for i in values["part-0.parquet"][0]]
    (tmp_path / "ds" / "key=1").mkdir()
    with pytest.raises(NotImplementedError, match="partitioned"):
        petastorm_compat.LegacyParquetDataset(str(tmp_path / "ds"))


def petastorm_dataset(tmp_path, sizes_by_file):
    """A Petastorm dataset as bigtrain's writer makes it: Parquet files + _common_metadata (Unischema, row groups)."""
    import pickle

    petastorm_compat.install()
    from petastorm import utils
    from petastorm.codecs import ScalarCodec
    from petastorm.etl import dataset_metadata
    from petastorm.unischema import Unischema, UnischemaField
    from pyspark.sql import types as T

    values = write_files(tmp_path / "ds", sizes_by_file)
    schema = Unischema("Row", [UnischemaField("x", np.int64, (), ScalarCodec(T.LongType()), False),
                               UnischemaField("s", np.str_, (), ScalarCodec(T.StringType()), False)])
    from petastorm.fs_utils import FilesystemResolver

    fs = FilesystemResolver(f"file://{tmp_path / 'ds'}").filesystem()  # pyarrow 14: its legacy local file system
    dataset = dataset_metadata.pq.ParquetDataset(str(tmp_path / "ds"), filesystem=fs, validate_schema=False)
    utils.add_to_dataset_metadata(dataset, dataset_metadata.UNISCHEMA_KEY, pickle.dumps(schema))
    groups = {name: len(sizes) for name, sizes in sizes_by_file.items()}
    utils.add_to_dataset_metadata(dataset, dataset_metadata.ROW_GROUPS_PER_FILE_KEY, json.dumps(groups))
    return f"file://{tmp_path / 'ds'}", values


def read_ids(url, *, columnar=True, **options):
    from petastorm import make_batch_reader, make_reader

    make = make_batch_reader if columnar else make_reader
    with petastorm_compat.arrow_schema_only() if columnar else __import__("contextlib").nullcontext():
        reader = make(url, num_epochs=1, **options)
    try:
        rows = list(reader)
        if columnar:
            return [int(x) for batch in rows for x in batch.x], [str(s) for batch in rows for s in batch.s]
        return [int(r.x) for r in rows], [r.s for r in rows]
    finally:
        reader.stop()
        reader.join()


@pytest.mark.parametrize("columnar", [True, False])
def test_readers_return_every_row_with_numpy_2_strings(tmp_path, columnar):
    """Row groups from the metadata (ParquetDatasetPiece), strings through np.unicode_ (numpy 2 has none)."""
    url, values = petastorm_dataset(tmp_path, {"part-0.parquet": [3, 2], "part-1.parquet": [4]})
    ids, strings = read_ids(url, columnar=columnar, reader_pool_type="thread", workers_count=1,
                            shuffle_row_groups=False)
    assert ids == list(range(9)) and strings == [f"v{i}" for i in range(9)]


def test_the_process_pool_reads_every_row(tmp_path):
    """Process-pool workers are new interpreters: they install the layer before importing Petastorm."""
    url, _ = petastorm_dataset(tmp_path, {"part-0.parquet": [3, 2], "part-1.parquet": [4, 1]})
    ids, strings = read_ids(url, reader_pool_type="process", workers_count=2, shuffle_row_groups=False)
    assert sorted(ids) == list(range(10)) and sorted(strings) == sorted(f"v{i}" for i in range(10))


@pytest.mark.parametrize("seed", [0, 7])
def test_a_seeded_shuffled_read_has_one_order_whatever_the_seed(tmp_path, seed):
    """seed=0 is a seed (Petastorm took it for none), and several workers keep the order (docs/stack.md: 4 of 30 reads
    differed with 3 workers)."""
    url, _ = petastorm_dataset(tmp_path, {f"part-{i}.parquet": [3] for i in range(4)})
    orders = {tuple(read_ids(url, reader_pool_type="thread", workers_count=3, seed=seed, shuffle_rows=True)[0])
              for _ in range(12)}
    assert len(orders) == 1
    (order,) = orders
    assert sorted(order) == list(range(12)) and list(order) != list(range(12))


def test_the_thread_pool_waits_for_the_ventilator_before_calling_a_read_over():
    """The race: nothing ventilated yet looked like 'all workers done' (an epoch of zero rows, no error)."""
    import queue

    petastorm_compat.install()
    import petastorm.reader
    from petastorm.workers_pool import thread_pool

    class NotFinished:
        def completed(self):
            return False

    for cls, expected in ((thread_pool.ThreadPool, True), (thread_pool.OrderedEndThreadPool, False)):
        pool = cls(2)
        pool._results_queues = [queue.Queue() for _ in range(2)]
        pool._ventilator = NotFinished()
        assert pool.all_workers_done() is expected and pool.current_worker_done(0) is expected
    assert petastorm.reader.ThreadPool is thread_pool.OrderedEndThreadPool


def test_the_stored_schema_loads_without_pyspark_through_placeholders(tmp_path):
    """A GPU node has no pyspark: the pickled Unischema names pyspark.sql.types, which Petastorm's restricted
    unpickler would fail to import."""
    url, _ = petastorm_dataset(tmp_path, {"part-0.parquet": [2]})
    blocked = tmp_path / "blocked"
    (blocked / "pyspark").mkdir(parents=True)
    (blocked / "pyspark" / "__init__.py").write_text("raise ImportError('pyspark is blocked in this test')\n")
    env = {**subprocess_env(), "PYTHONPATH": f"{blocked}:{REPO}"}
    code = ("import sys; from compat import petastorm as c; c.install(); print('spark types' in c.APPLIED)\n"
            "from petastorm.etl.dataset_metadata import get_schema_from_dataset_url as g\n"
            "from petastorm import make_reader\n"
            "s = g(sys.argv[1]); print(sorted(s.fields), type(s.fields['x'].codec._spark_type).__name__)\n"
            "r = make_reader(sys.argv[1], reader_pool_type='dummy', num_epochs=1, shuffle_row_groups=False)\n"
            "print([int(row.x) for row in r]); r.stop(); r.join()")
    done = subprocess.run([sys.executable, "-c", code, url], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()[-3:]
    assert lines == ["True", "['s', 'x'] LongType", "[0, 1]"]


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 3)])
def test_png_encoding_writes_the_released_bytes_without_opencv_warnings(shape, capfd):
    """OpenCV 5 warned on every PNG Petastorm encoded (a JPEG flag): the bytes are what plain imencode writes."""
    import cv2

    petastorm_compat.install()
    from petastorm.codecs import CompressedImageCodec
    from petastorm.unischema import UnischemaField

    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    field = UnischemaField("image", np.uint8, shape, CompressedImageCodec("png"), False)
    capfd.readouterr()
    encoded = field.codec.encode(field, image)
    bgr = image[:, :, (2, 1, 0)] if len(shape) == 3 else image
    assert bytes(encoded) == bytes(cv2.imencode(".png", bgr)[1])
    assert np.array_equal(field.codec.decode(field, encoded), image)
    assert "unsupported key" not in capfd.readouterr().err
    with pytest.raises(ValueError, match="Unexpected type"):
        field.codec.encode(field, image.astype(np.int16))
