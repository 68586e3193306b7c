"""Device selection, DDP's backend string, mixed precision and batch movement: the logic that decides how a rank
uses its GPU, checked here on CPU (the GPU runs themselves are scripts/gpu_check.sh)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import LaunchError
from dataset.manifest import DatasetSpec, ImageSpec, SequenceSpec
from training.collation import image_collate, sequence_collate, task_for
from training.device import (
    precision_for,
    process_group_backend,
    select_device,
    to_device,
)
from training.distributed import init_distributed
from training.models import CNN
from training.spark_launch import gpus_per_task


SEQUENCES = DatasetSpec("sequence", ["a", "b"], sequence=SequenceSpec(vocab_size=50, token_dtype="<u2", max_length=8,
                                                                     tokenizer="word"))
IMAGES = DatasetSpec("image", ["a", "b"], image=ImageSpec(size=8, channels=3, codec="png", shape=[8, 8, 3]))

def test_each_local_rank_gets_its_own_gpu_and_cpu_hosts_get_the_cpu():
    assert select_device("auto", 3, cuda_available=True, device_count=4) == torch.device("cuda", 3)
    assert select_device("cuda", 0, cuda_available=True, device_count=1) == torch.device("cuda", 0)
    assert select_device("auto", 1, cuda_available=False, device_count=0) == torch.device("cpu")
    assert select_device("cpu", 0, cuda_available=True, device_count=8) == torch.device("cpu")


def test_more_processes_than_gpus_is_refused_naming_both_counts():
    with pytest.raises(LaunchError, match=r"local rank 2 has no GPU of its own: this host shows 2 GPU\(s\)"):
        select_device("auto", 2, cuda_available=True, device_count=2)


def test_asking_for_cuda_without_a_gpu_names_the_key():
    with pytest.raises(LaunchError, match=r"train\.device is cuda .* no GPU"):
        select_device("cuda", 0, cuda_available=False, device_count=0)
    with pytest.raises(LaunchError, match=r"train\.device: 'tpu' is not one of auto, cpu, cuda"):
        select_device("tpu", 0, cuda_available=False, device_count=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only host's behaviour")
def test_backends_on_a_cpu_host_train_on_the_cpu_and_refuse_cuda():
    assert init_distributed("single").device == torch.device("cpu")
    with pytest.raises(LaunchError, match="no GPU"):
        init_distributed("single", device="cuda")


def test_ddp_on_gpus_has_gloo_for_cpu_tensors_beside_nccl():
    """An NCCL-only group dies on the first CPU tensor (metric sums, ids, objects): seen on an H200."""
    assert process_group_backend(torch.device("cuda", 1)) == "cpu:gloo,cuda:nccl"
    assert process_group_backend(torch.device("cpu")) == "gloo"


def test_a_device_mapped_group_carries_cpu_collectives_over_gloo(tmp_path):
    """What the GPU backend string leaves to Gloo, through a real (world of one) process group of the same form:
    tensor sums, all_gather of tensors and objects, object broadcast."""
    import torch.distributed as tdist

    store = tdist.FileStore(str(tmp_path / "store"), 1)
    tdist.init_process_group("cpu:gloo", store=store, rank=0, world_size=1)
    try:
        sums = torch.tensor([1.5, 2.0], dtype=torch.float64)
        tdist.all_reduce(sums)
        gathered = [torch.zeros(3, dtype=torch.int64)]
        tdist.all_gather(gathered, torch.arange(3))
        names: list = [None]
        tdist.all_gather_object(names, "host-a")
        holder = [{"epoch": 2}]
        tdist.broadcast_object_list(holder, src=0)
    finally:
        tdist.destroy_process_group()
    assert sums.tolist() == [1.5, 2.0] and gathered[0].tolist() == [0, 1, 2]
    assert names == ["host-a"] and holder == [{"epoch": 2}]


def test_mixed_precision_is_bfloat16_where_the_gpu_has_it_else_float16_with_scaling():
    gpu = torch.device("cuda", 0)
    bf16 = precision_for(True, gpu, bf16_supported=True)
    fp16 = precision_for(True, gpu, bf16_supported=False)
    assert (bf16.autocast, bf16.scaled, bf16.name) == (torch.bfloat16, False, "bfloat16")
    assert (fp16.autocast, fp16.scaled, fp16.name) == (torch.float16, True, "float16")
    for precision in (precision_for(True, torch.device("cpu")), precision_for(False, gpu, bf16_supported=True)):
        assert (precision.autocast, precision.scaled, precision.name) == (None, False, "float32")


def test_images_cross_as_uint8_and_the_cnn_scales_them_on_its_device():
    rows = [type("Row", (), {"image": np.full((6, 6, 3), v, np.uint8), "label": v % 2, "sample_id": v})()
            for v in (0, 51, 255)]
    (x,), y, ids = image_collate(rows)
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 6, 6) and y.tolist() == [0, 1, 1]
    model = CNN(in_channels=3, image_size=6, num_classes=2).eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x.float() / 255.0))


def test_sequence_lengths_stay_on_the_host_where_packing_reads_them():
    task = task_for(SEQUENCES)
    rows = [type("Row", (), {"tokens": np.array([4, 5, 6], "<u2").tobytes(), "length": 3, "label": 0,
                             "sample_id": 1})()]
    inputs, _, _ = sequence_collate(rows, dtype="<u2")
    assert task.host_inputs == (1,)
    moved = to_device(inputs, torch.device("cpu"), task.host_inputs)
    assert moved[1] is inputs[1] and torch.equal(moved[0], inputs[0])
    assert task_for(IMAGES).host_inputs == ()


def test_torch_distributor_asks_for_gpus_only_where_spark_schedules_them():
    assert gpus_per_task({"spark.task.resource.gpu.amount": "1"}) == 1.0
    assert gpus_per_task({"spark.executor.cores": "4"}) == 0.0
    with pytest.raises(ValueError, match=r"spark\.task\.resource\.gpu\.amount='one'"):
        gpus_per_task({"spark.task.resource.gpu.amount": "one"})


def test_training_batches_of_sequences_come_longest_first_and_pack_to_the_same_logits():
    """Longest-first batches are packed without a reordering index (a copy to the GPU and a wait at every step);
    each row gets the logits it gets in the batch as given."""
    from training.models import RNNClassifier

    rows = [type("Row", (), {"tokens": np.arange(2, 2 + n, dtype="<u2").tobytes(), "length": n, "label": i % 2,
                             "sample_id": 100 + i})() for i, n in enumerate((2, 5, 3, 6, 1))]
    task = task_for(SEQUENCES)
    prepared = task.prepare({name: [getattr(r, name) for r in rows] for name in ("tokens", "length", "label",
                                                                                  "sample_id")})
    (tokens, lengths), y, ids = task.collate(prepared, np.arange(len(rows)))
    assert lengths.tolist() == [6, 5, 3, 2, 1] and ids.tolist() == [103, 101, 102, 100, 104]
    assert y.tolist() == [1, 1, 0, 0, 0]
    (as_given, given_lengths), _, given_ids = sequence_collate(rows, dtype="<u2")
    assert given_ids.tolist() == [100, 101, 102, 103, 104]
    model = RNNClassifier(cell="lstm", vocab_size=16, num_classes=2).eval()
    with torch.no_grad():
        sorted_logits, given_logits = model(tokens, lengths), model(as_given, given_lengths)
    by_id = dict(zip(given_ids.tolist(), given_logits))
    for i, sample in enumerate(ids.tolist()):
        assert torch.allclose(sorted_logits[i], by_id[sample], atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only host's behaviour")
def test_train_job_with_device_cuda_on_a_cpu_host_exits_2_in_one_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO, subprocess_env

    (tmp_path / "data").mkdir()
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "train.py"), "--backend", "single", "--device", "cuda",
                           "--data", str(tmp_path / "data"), "--output", str(tmp_path / "out")],  # there, not read
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train.device is cuda (--device cuda) but torch sees no GPU")
