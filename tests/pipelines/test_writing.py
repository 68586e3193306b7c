"""pipelines.writing: the rejected records' job runs beside the splits' write, is waited for, and its failure is
raised (the splits' own failure first)."""
from __future__ import annotations

import threading
import time

import pytest

from pipelines.writing import _beside


@pytest.mark.spark
def test_a_job_beside_the_block_is_waited_for_and_its_error_raised(spark):
    ran: list[str] = []

    def job() -> None:
        time.sleep(0.2)
        ran.append(threading.current_thread().name)

    with _beside(spark, job):
        assert ran == []  # it runs beside the block, not before it
    assert len(ran) == 1 and ran[0] != threading.current_thread().name  # waited for, in a thread of its own

    def failing() -> None:
        raise ValueError("the rejected records could not be written")

    with pytest.raises(ValueError, match="could not be written"):
        with _beside(spark, failing):
            pass
    with pytest.raises(KeyError, match="the block's own"):  # the block's error wins; the job still ran to its end
        with _beside(spark, job):
            raise KeyError("the block's own")
    assert len(ran) == 2
    with _beside(spark, None):  # nothing rejected: nothing runs
        pass
