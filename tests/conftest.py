"""Shared fixtures: one SparkSession for the whole test session, small sample data built here (never committed)."""
from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.locales import jvm_locale_changes

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(config, items):
    """Markers must say what a test needs: one that gets a SparkSession (the ``spark`` fixture, directly or through
    a dataset fixture) without the ``spark`` marker would start the JVM inside ``make test-fast``."""
    unmarked = [item.nodeid for item in items
                if "spark" in getattr(item, "fixturenames", ()) and item.get_closest_marker("spark") is None]
    if unmarked:
        raise pytest.UsageError("tests using the spark fixture without @pytest.mark.spark:\n  " + "\n  ".join(unmarked))


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pipelines.session import build_spark

    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    session = build_spark(app_name="bigtrain-tests", master="local[2]", conf={
        "spark.sql.shuffle.partitions": "4",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.warehouse.dir": str(warehouse),
        "spark.driver.memory": "2g",
    })
    yield session
    session.stop()


@pytest.fixture
def cli(spark, monkeypatch, capsys):
    """``bigtrain SUBCOMMAND ARGS...`` run in this process on the test session's Spark, as ``run(*argv) -> (exit code,
    stdout, stderr)``: the whole command (flags, config, checks, summary, exit code) without a JVM of its own. A job
    stops its session when it ends; here that is the test session's, so the stop is left out."""
    from jobs.cli import main

    monkeypatch.setattr(spark, "stop", lambda: None)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run


@pytest.fixture
def predict_cli(cli):
    """``bigtrain predict ARGS...`` in this process (``cli``), answering as a subprocess's CompletedProcess does."""
    def run(*args: str) -> SimpleNamespace:
        code, out, err = cli("predict", *args)
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)
    return run


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory) -> Path:
    """10 classes x 12 images of the demo generator, plus 6 unusable files (5 in class folders, 1 in the root)."""
    from pipelines.samples import generate_images

    root = tmp_path_factory.mktemp("sample-images")
    generate_images(root, per_class=12, seed=3, bad_files=6)
    return root


@pytest.fixture(scope="session")
def image_dataset(spark, sample_images, tmp_path_factory) -> Path:
    """The sample images through the real preprocessing job (in this session's Spark), written as 3 row groups per
    split so that two ranks get uneven shards."""
    from core.config import load_section
    from core.paths import to_url
    from pipelines.image_dataset import PreprocessImagesConfig, preprocess_images

    out = tmp_path_factory.mktemp("image-dataset") / "ds"
    config = load_section("preprocess_images", PreprocessImagesConfig, flags={"image_size": 16, "ranks": 3,
                                                                                      "codec": "png"})
    summary = preprocess_images(spark, input_url=to_url(str(sample_images)), output_url=to_url(str(out)), config=config)
    return snapshot_path(summary)


def save_untrained_checkpoint(dataset: Path, folder: Path, seed: int) -> Path:
    """A checkpoint of the default model for ``dataset``, untrained (seeded): its predictions are as testable as a
    trained one's, at none of the cost."""
    import torch

    from core.config import load_section
    from dataset.info import load_dataset_info
    from training import checkpoint
    from training.config import TrainConfig
    from training.models import build_model, resolve_model_name

    config = load_section("train", TrainConfig, flags={"seed": seed})
    info = load_dataset_info(str(dataset))
    torch.manual_seed(seed)
    model = build_model(config.model, dataset=info.spec, config=config)
    name = resolve_model_name(config.model, info.kind)
    return checkpoint.save(folder / checkpoint.FINAL_FILE, checkpoint.model_payload(
        model, name, config, classes=info.classes, class_to_index=info.manifest.class_to_index,
        dataset=checkpoint.dataset_entry(info)))


@pytest.fixture(scope="session")
def image_checkpoint(image_dataset, tmp_path_factory) -> Path:
    """The CNN for ``image_dataset``, untrained; tests copy it before they change it."""
    return save_untrained_checkpoint(image_dataset, tmp_path_factory.mktemp("cnn"), seed=1)


@pytest.fixture(scope="session")
def text_checkpoint(text_dataset, tmp_path_factory) -> Path:
    """The default text model for ``text_dataset``, untrained; tests copy it before they change it."""
    return save_untrained_checkpoint(text_dataset, tmp_path_factory.mktemp("lstm"), seed=2)


def snapshot_path(summary: dict) -> Path:
    """The committed snapshot folder a preprocessing job wrote (``<dataset>/snapshots/<id>``): fixtures hand it
    out, so tests read its metadata.json and splits directly, and readers take it as a pinned snapshot."""
    return Path(summary["output"][len("file://"):])


def current_snapshot(dataset: Path) -> Path:
    """The current committed snapshot folder of a dataset folder a job wrote."""
    from dataset.layout import resolve_snapshot

    return Path(resolve_snapshot(str(dataset))[len("file://"):])


SECOND_HOST = "127.0.0.1"


def second_host_name() -> str:
    """A second name for this machine that Horovod launches on without ssh: horovodrun treats a host as local when
    its name resolves to an address of one of this machine's interfaces, and host names are compared as text, so
    ``localhost`` and ``127.0.0.1`` are two hosts on the loopback interface. Fails (never skips) where they are not:
    the multi-host tests must run on every CI machine, containers whose host name resolves off loopback included."""
    import socket

    import psutil

    local = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family == socket.AF_INET}
    if SECOND_HOST not in local or socket.gethostbyname("localhost") not in local:
        pytest.fail(f"multi-host Horovod tests need localhost and {SECOND_HOST} on a local interface "
                    f"(this machine's IPv4 addresses: {', '.join(sorted(local))})")
    return SECOND_HOST


def tool(name: str) -> str:
    """A console script of this virtual environment (horovodrun, spark-submit, bigtrain)."""
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found next to {sys.executable} or on PATH: run `make setup`")
    return found


def subprocess_env() -> dict[str, str]:
    """This environment for a command a test runs, with the venv's tools first and a UTF-8 locale for the JVMs
    that spark-submit starts (as scripts/demo.sh sets it; a test of another locale sets its own)."""
    env = dict(os.environ)
    env.update(jvm_locale_changes(env))
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env.pop("PYSPARK_GATEWAY_PORT", None)
    return env


@pytest.fixture(scope="session")
def sample_texts(tmp_path_factory) -> Path:
    """800 sample reviews over 3 JSON Lines files, plus one line of each unusable kind."""
    from pipelines.samples import BAD_LINES, generate_texts

    root = tmp_path_factory.mktemp("sample-texts")
    generate_texts(root, records=800, files=3, bad_lines=len(BAD_LINES), seed=5)
    return root


@pytest.fixture(scope="session")
def text_dataset(spark, sample_texts, tmp_path_factory) -> Path:
    """The sample texts through the real sequence job (in this session's Spark), 3 row groups per split."""
    from core.config import load_section
    from core.paths import to_url
    from pipelines.sequence_dataset import (
        PreprocessSequencesConfig,
        preprocess_sequences,
    )

    out = tmp_path_factory.mktemp("text-dataset") / "ds"
    config = load_section("preprocess_sequences", PreprocessSequencesConfig, flags={"ranks": 3, "max_length": 24})
    summary = preprocess_sequences(spark, input_url=to_url(str(sample_texts)), output_url=to_url(str(out)),
                                   fmt="jsonl", config=config)
    return snapshot_path(summary)


def _free_port(preferred: int) -> int:
    import socket

    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port")


def _wait_for(path: Path, text: str, process, timeout: float = 90) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.5)
    log = path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"
    raise RuntimeError(f"{text!r} did not appear in {path}:\n{log}")


@pytest.fixture(scope="session")
def standalone_cluster(tmp_path_factory):
    """A real Spark standalone cluster on this machine: a master and two workers (1 core, 1 GB each, their own work
    directories), started from the Spark that pyspark ships, stopped afterwards. Yields the master URL."""
    import subprocess

    from pyspark.find_spark_home import _find_spark_home

    spark_class = str(Path(_find_spark_home()) / "bin" / "spark-class")
    root = tmp_path_factory.mktemp("standalone")
    port = _free_port(7077)
    env = {**subprocess_env(), "SPARK_LOG_DIR": str(root), "SPARK_NO_DAEMONIZE": "1"}
    processes = []

    def start(name: str, *args: str):
        log = root / f"{name}.log"
        handle = log.open("w")
        process = subprocess.Popen([spark_class, *args], stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=root)
        processes.append(process)
        return process, log

    try:
        master, master_log = start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                   "--port", str(port), "--webui-port", str(_free_port(0)))
        _wait_for(master_log, "I have been elected leader", master)
        url = f"spark://127.0.0.1:{port}"
        for i in range(2):
            work = root / f"worker{i}"
            work.mkdir()
            worker, log = start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                                "--cores", "1", "--memory", "1g", "--work-dir", str(work),
                                "--webui-port", str(_free_port(0)))
            _wait_for(log, "Successfully registered with master", worker)
        yield url
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except Exception:  # noqa: BLE001 - make sure nothing outlives the tests
                process.kill()


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory):
    """A real Spark Connect server on this machine (``SparkConnectServer`` through the spark-submit that pyspark
    ships, local[2], its Python workers this interpreter), stopped afterwards. Yields its ``sc://`` URL. A client
    must run in a process of its own: PySpark marks a process that connects as a Connect client, and this test
    session's classic SparkSession could not run beside it."""
    import socket
    import subprocess
    import time

    root = tmp_path_factory.mktemp("connect")
    port = _free_port(15002)
    log = root / "server.log"
    env = {**subprocess_env(), "SPARK_LOCAL_IP": "127.0.0.1"}
    with log.open("w") as handle:
        process = subprocess.Popen(
            [tool("spark-submit"), "--master", "local[2]", "--class",
             "org.apache.spark.sql.connect.service.SparkConnectServer",
             "--conf", f"spark.connect.grpc.binding.port={port}",
             "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
             "--conf", "spark.executorEnv.PYTHONWARNINGS=ignore::FutureWarning",
             "--driver-java-options", f"-Dlog4j2.configurationFile=file:{REPO / 'conf' / 'log4j2.properties'}",
             "spark-internal"], stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Spark Connect server did not listen on port {port}:\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield f"sc://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def python_without_bigtrain(tmp_path_factory) -> str:
    """An interpreter that has every dependency but not bigtrain itself (the editable install's .pth is skipped),
    as on a cluster where only the zip shipped with --py-files brings the code."""
    import sysconfig

    wrapper = tmp_path_factory.mktemp("python") / "python"
    site = sysconfig.get_paths()["purelib"]
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec {sys.executable} -S "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture(scope="session")
def dist_zip(tmp_path_factory) -> Path:
    import subprocess

    out = tmp_path_factory.mktemp("dist") / "bigtrain-src.zip"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_dist.py"), str(out)], check=True,
                   capture_output=True, env=subprocess_env())
    return out


@pytest.fixture(scope="session")
def s3_server():
    """A local S3-compatible server (moto's server mode) on 127.0.0.1; yields the environment that points
    fsspec/s3fs (and so Petastorm and bigtrain) at it."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield {"AWS_ACCESS_KEY_ID": "bigtrain-test", "AWS_SECRET_ACCESS_KEY": "bigtrain-test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    server.stop()


@pytest.fixture(params=["file", "memory"])
def dataset_url(request, tmp_path):
    """A dataset folder on the local disk, and in fsspec's in-memory file system (standing in for object storage
    where the behaviour does not depend on the engine: no lock, no rename)."""
    from core.paths import filesystem, to_url

    if request.param == "file":
        yield to_url(str(tmp_path / "ds"))
        return
    url = f"memory://bigtrain-{uuid.uuid4().hex}/ds"
    yield url
    fs, path = filesystem(url)
    fs.rm(path.rsplit("/", 1)[0], recursive=True)
