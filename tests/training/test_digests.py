"""training.digests: a step's digest depends on its rows and their order only; the last line of a step wins."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from training import digests


def test_a_digest_is_the_rows_in_their_order():
    ids = [7, -3, 2**40]
    assert digests.digest(torch.tensor(ids)) == digests.digest(np.array(ids, dtype=np.int64)) == digests.digest(ids)
    assert digests.digest(ids) != digests.digest(list(reversed(ids)))
    assert len(digests.digest(ids)) == 16


def test_each_rank_appends_a_line_a_step_and_a_rerun_step_replaces_the_earlier_line(tmp_path):
    dist = SimpleNamespace(rank=1, size=2)
    log = digests.StepDigests(tmp_path, dist)
    log.record(1, 1, torch.tensor([1, 2]))
    log.record(1, 2, torch.tensor([3, 4]))
    log.close()
    assert not (tmp_path / "digests" / "rank0.tsv").exists()
    again = digests.StepDigests(tmp_path, dist)  # a resumed run trains step 2 again
    again.record(1, 2, torch.tensor([4, 3]))
    again.close()
    lines = (tmp_path / "digests" / "rank1.tsv").read_text().splitlines()
    assert lines[0] == f"1\t1\t2\t{digests.digest([1, 2])}" and len(lines) == 3
    assert digests.read(tmp_path) == {(1, 1, 1): (2, digests.digest([1, 2])), (1, 1, 2): (2, digests.digest([4, 3]))}
    digests.StepDigests(tmp_path / "refused", dist).close()  # no step: no file
    assert not (tmp_path / "refused").exists()
