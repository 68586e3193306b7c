"""Entry point of Petastorm's process-pool workers (``python -m compat.petastorm_worker RUNNABLE``).

Petastorm starts each worker as a new interpreter running ``petastorm.workers_pool.exec_in_new_process_entrypoint``,
whose first line imports Petastorm: on the current stack that import fails before any of the caller's code runs.
``compat.petastorm.install`` points the pool here instead: the layer is installed, then Petastorm's own entry
point runs unchanged.
"""
import runpy

from compat import petastorm

petastorm.install()
runpy.run_module("petastorm.workers_pool.exec_in_new_process_entrypoint", run_name="__main__", alter_sys=True)
