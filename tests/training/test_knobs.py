"""Each optimisation knob, checked for its effect through the trainer's own step code, on an in-memory dataset (one
end-to-end run on a Spark-written dataset: the seed makes it reproducible through the real loader)."""
from __future__ import annotations

import copy
import logging
import math
import os

import pytest
import torch

from core.config import load_section
from core.errors import ConfigError
from tests.training import inmemory
from training import checkpoint
from training.config import TrainConfig
from training.distributed import SingleProcess, unwrap
from training.epoch import forward_backward, optimizer_step
from training.wiring import build_trainer, fit
from training.schedule import lr_factor
from training.shards import plan_shard

SOURCE = inmemory.image_source((100, 32, 32))  # 100 rows: the last batch of 16 is padded


def config(*overrides: str) -> TrainConfig:
    return inmemory.config("train.cnn.dropout=0.0", *overrides)


def prepare(config: TrainConfig, output_dir, dist):
    return build_trainer(config, SOURCE, output_dir, dist)


def one_batch(trainer, rows: int):
    """The first ``rows`` rows of the train split as one batch."""
    split = trainer.batches.splits["train"]
    plan = plan_shard(split.row_group_sizes, 0, 1)
    inputs, y, _ = next(trainer.batches.evaluation_batches("train", plan, batch_size=rows))
    assert len(y) == rows
    return inputs, y


def step(trainer, batches, lr: float = 0.05) -> dict[str, torch.Tensor]:
    """One optimizer step over ``batches`` accumulated as one group, as train_epoch does; the new weights."""
    for i, (inputs, y) in enumerate(batches):
        forward_backward(trainer.step, *placed(trainer, inputs, y), len(batches), sync=i == len(batches) - 1)
    optimizer_step(trainer.step, lr=lr)
    return {k: v.detach().clone() for k, v in unwrap(trainer.model).state_dict().items()}


def placed(trainer, inputs, y):
    """A batch's inputs and labels as the model takes them, on its device."""
    return trainer.placement.inputs(inputs), y.to(trainer.device)


def split_batch(inputs, y, parts: int):
    size = len(y) // parts
    return [(tuple(t[i * size:(i + 1) * size] for t in inputs), y[i * size:(i + 1) * size]) for i in range(parts)]


def horovod_world_of_one():
    pytest.importorskip("horovod.torch")
    from training.distributed import HorovodBackend

    return HorovodBackend()


@pytest.mark.parametrize("backend", ["single", "horovod"])
def test_accumulating_k_batches_of_b_matches_one_batch_of_k_times_b(tmp_path, backend):
    dist = SingleProcess() if backend == "single" else horovod_world_of_one()
    big = prepare(config("train.optimizer=sgd", "train.momentum=0.0"), tmp_path, dist)
    accumulated = prepare(config("train.optimizer=sgd", "train.momentum=0.0", "train.backward_passes_per_step=4"),
                          tmp_path, dist)
    accumulated.model.load_state_dict(big.model.state_dict())
    start = copy.deepcopy(big.model.state_dict())
    inputs, y = one_batch(big, 32)
    after_big = step(big, [(inputs, y)])
    after_accumulated = step(accumulated, split_batch(inputs, y, 4))
    assert any(not torch.equal(after_big[k], start[k]) for k in start)  # the step did move the weights
    for name in after_big:
        torch.testing.assert_close(after_accumulated[name], after_big[name], rtol=1e-4, atol=1e-6, msg=name)


def test_an_epoch_takes_one_optimizer_step_per_k_batches(tmp_path):
    result = prepare(config("train.backward_passes_per_step=3"), tmp_path, SingleProcess()).fit()
    split_rows = result.metrics["train_rows"]
    batches = math.ceil(split_rows / 16)
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert saved["global_step"] == math.ceil(batches / 3)


def test_gradient_clipping_bounds_the_update(tmp_path):
    run = prepare(config("train.optimizer=sgd", "train.momentum=0.0", "train.weight_decay=0.0",
                         "train.grad_clip_norm=0.001"), tmp_path, SingleProcess())
    before = copy.deepcopy(unwrap(run.model).state_dict())
    after = step(run, [one_batch(run, 16)], lr=1.0)
    update = torch.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in before))
    assert float(update) == pytest.approx(0.001, rel=1e-3)  # SGD step = lr x clipped gradient, norm 0.001


def test_weight_decay_pulls_weights_toward_zero_by_lr_times_decay(tmp_path):
    dist = SingleProcess()
    plain = prepare(config("train.optimizer=sgd", "train.momentum=0.0", "train.weight_decay=0.0"), tmp_path, dist)
    decayed = prepare(config("train.optimizer=sgd", "train.momentum=0.0", "train.weight_decay=0.5"), tmp_path, dist)
    start = copy.deepcopy(plain.model.state_dict())
    batch = one_batch(plain, 16)
    a, b = step(plain, [batch], lr=0.1), step(decayed, [batch], lr=0.1)
    for name in start:
        torch.testing.assert_close(b[name] - a[name], -0.1 * 0.5 * start[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture
def ddp_world_of_one(monkeypatch):
    """A real Gloo process group of one process (what torchrun would set up), for DDP's own gradient path."""
    import socket

    import torch.distributed as tdist

    from training.distributed import TorchBackend

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    yield TorchBackend()
    tdist.destroy_process_group()


def test_fp16_compression_allreduces_gradients_at_half_precision(tmp_path, ddp_world_of_one):
    dist = ddp_world_of_one
    exact = prepare(config(), tmp_path, dist)
    compressed = prepare(config("train.fp16_compression=true"), tmp_path, dist)
    compressed.model.load_state_dict(exact.model.state_dict())
    batch = one_batch(exact, 16)
    grads = []
    for run in (exact, compressed):
        forward_backward(run.step, *placed(run, *batch), 1, sync=True)  # DDP: the allreduce (and its comm hook)
        grads.append({n: p.grad.clone() for n, p in unwrap(run.model).named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g.half().float(), rtol=0, atol=0, msg=name)
    assert any(not torch.equal(grads[1][n], g) for n, g in grads[0].items())


def test_learning_rate_warmup_then_step_and_cosine_schedules():
    warm = config("train.epochs=10", "train.warmup_epochs=2", "train.lr_schedule=step", "train.lr_step_epochs=4",
                  "train.lr_gamma=0.5")
    assert lr_factor(warm, 0.5) == pytest.approx(0.25) and lr_factor(warm, 2.0) == 1.0
    assert [lr_factor(warm, e) for e in (3.9, 4.0, 8.5)] == [1.0, 0.5, 0.25]
    cosine = config("train.epochs=10", "train.warmup_epochs=0", "train.lr_schedule=cosine")
    assert lr_factor(cosine, 0.0) == 1.0 and lr_factor(cosine, 5.0) == pytest.approx(0.5)
    assert lr_factor(cosine, 10.0) == pytest.approx(0.0, abs=1e-12)


def test_the_loop_applies_the_schedule(tmp_path):
    metrics = prepare(config("train.epochs=3", "train.warmup_epochs=1", "train.lr_schedule=cosine", "train.lr=0.04"),
                      tmp_path, SingleProcess()).fit().metrics
    lrs = [h["lr"] for h in metrics["history"]]  # the lr of each epoch's last step
    assert lrs[0] == pytest.approx(0.04)                           # end of warmup: the peak
    assert lrs[1] == pytest.approx(0.04 * 0.5 * (1 + math.cos(math.pi / 2)))  # half-way through the cosine
    assert lrs[2] == pytest.approx(0.0, abs=1e-9)                  # the cosine ends at 0


def test_early_stopping_ends_the_run_when_validation_loss_stalls(tmp_path):
    metrics = prepare(config("train.epochs=6", "train.lr=1e-9", "train.early_stopping_patience=2",
                             "train.early_stopping_min_delta_absolute=0.5"), tmp_path, SingleProcess()).fit().metrics
    assert metrics["stopped_early"] is True and metrics["epochs_completed"] == 3
    assert len(metrics["history"]) == 3


def test_mixed_precision_on_cpu_is_a_logged_no_op(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="bigtrain.train"):
        run = prepare(config("train.mixed_precision=true"), tmp_path, SingleProcess())
    assert not run.step.scaler.is_enabled()
    assert "mixed_precision: no GPU here" in caplog.text


@pytest.mark.spark
def test_the_seed_makes_a_run_reproducible(image_dataset, tmp_path):
    def weights(seed: int, out: str):
        model = fit(config(f"train.seed={seed}", "train.cnn.dropout=0.25"), data_url=str(image_dataset),
                      output_dir=tmp_path / out, dist=SingleProcess()).model
        return torch.cat([p.detach().ravel() for p in model.parameters()])

    first, again, other = weights(7, "a"), weights(7, "b"), weights(8, "c")
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_threads_a_number_wins_else_omp_num_threads_else_the_ranks_share_of_the_cores(monkeypatch):
    """On a shared host one LSTM epoch took 18 s with 2 threads and 3 s with one: train.threads sets them, and
    OMP_NUM_THREADS is honoured under auto."""
    from types import SimpleNamespace

    from training.distributed import set_threads

    before = torch.get_num_threads()
    cpu = SimpleNamespace(device=torch.device("cpu"), local_size=1)
    try:
        assert set_threads(cpu, 1, environ={"OMP_NUM_THREADS": "2"}) == 1 == torch.get_num_threads()
        assert set_threads(cpu, "auto", environ={"OMP_NUM_THREADS": "2"}) == 2
        cores = len(os.sched_getaffinity(0))
        assert set_threads(SimpleNamespace(device=torch.device("cpu"), local_size=2), "auto", environ={}) == \
            max(1, cores // 2)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match=r"train.threads: must be auto or at least 1, got 0"):
        load_section("train", TrainConfig, overrides=["train.threads=0"])
