"""The Kubernetes spark-submit line of docs/operations.md, as written, is accepted by spark-submit: run against an
API server that is not there, it gets as far as contacting the cluster (the line once failed before that, asking for
spark.kubernetes.file.upload.path)."""
from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from tests.conftest import REPO, subprocess_env, tool


def readme_command(comment: str) -> list[str]:
    """The command under the docs/operations.md line starting with ``comment`` (continuation lines joined)."""
    lines = (REPO / "docs" / "operations.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(comment))
    body = lines[start + 1:]
    first = next(i for i, line in enumerate(body) if not line.startswith("#"))
    command = []
    for line in body[first:]:
        command.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            break
    return shlex.split(" ".join(command))


@pytest.mark.spark
def test_the_kubernetes_example_reaches_the_cluster():
    argv = readme_command("# Kubernetes")
    assert argv[0] == "spark-submit" and "--deploy-mode" in argv
    master = argv.index("--master") + 1
    assert argv[master].startswith("k8s://")
    argv[master] = "k8s://https://127.0.0.1:9"  # nothing listens there
    done = subprocess.run([tool("spark-submit"), *argv[1:]], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "spark.kubernetes.file.upload.path" not in out, out[-3000:]
    # Spark 3.5's Kubernetes client (OkHttp) and Spark 4's (netty) word the refused connection differently.
    assert re.search(r"(Failed to connect to|Connection refused: ) ?/?127\.0\.0\.1:9", out), out[-3000:]
