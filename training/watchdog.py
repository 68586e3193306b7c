"""The watchdog: when no rank has made progress for ``train.watchdog_seconds``, say which rank is stuck and where,
and end the run, instead of every rank waiting in a collective until Gloo's or NCCL's timeout (30 minutes).

* **Heartbeat.** The training thread of every rank notes where it is (``Heartbeat.set``: epoch, part, step and
  phase; a few attribute writes, no I/O). A thread of the rank publishes it about once a second, with the loader's
  position (the batch it waits for: split, files and row groups), to a ``torch.distributed.TCPStore`` that rank 0
  serves (its address broadcast once at the start, over the run's own backend: Horovod or DDP).
* **Judgement, on rank 0.** A rank made progress when its heartbeat changed. When none has for the budget, the
  stuck ranks are those not waiting in a collective, and of those the ones furthest behind (``stuck_ranks``).
* **The end.** Rank 0 writes ``<output>/hang.json`` (the ranks, where each sits, which are stuck), asks every rank
  for its Python stacks (``faulthandler``, all threads) through the store, writes them to
  ``<output>/hang-stacks/rank<N>.txt``, logs one line, and every rank exits with ``EXIT_HUNG`` (5).

It needs a Python thread to run: a rank stuck in native code that holds the GIL is not seen (its heartbeat thread is
stuck too; rank 0 then names it by its silence as long as rank 0 itself can run). Not started under ``--elastic``,
where Horovod itself replaces lost workers and rank 0 may move.
"""
from __future__ import annotations

import faulthandler
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.distributed import TCPStore

from core import atomic
from core.errors import EXIT_HUNG
from core.logs import counted
from training.outputs import HANG_FILE, STACKS_DIR, rank_file

log = logging.getLogger("bigtrain.train")
PARTS = ("start", "train", "validation", "test", "finish")
PHASES = ("loading", "compute", "backward", "step", "checkpoint", "collective")  # a step's order; collective last
STACKS_WAIT_S = 15.0  # how long rank 0 waits for the other ranks' stacks
EXIT_WAIT_S = 30.0    # how long a rank waits for rank 0 to finish the files before it exits anyway
CONNECT_S = 5.0       # how long a rank tries each of rank 0's addresses


class Heartbeat:
    """Where this rank's training thread is: the part of the run, its step (counted from 1, as the logs count
    them; in a ``loading`` phase, the step whose batch it waits for) and the phase. ``set`` is called at every
    phase of every step: plain attribute writes, read by the watchdog's thread."""
    __slots__ = ("epoch", "part", "step", "phase", "position")

    def __init__(self, position: Callable[[], Any] | None = None):
        self.epoch, self.part, self.step, self.phase = 0, "start", 0, "compute"
        self.position = position  # the loader's position, asked for when the beat is published

    def set(self, phase: str, step: int | None = None) -> None:
        self.phase = phase
        if step is not None:
            self.step = step

    def enter(self, part: str, epoch: int | None = None) -> None:
        """A new part of the run (train, validation, test, finish); its steps count from 0."""
        self.part, self.step, self.phase = part, 1, "loading"
        if epoch is not None:
            self.epoch = epoch

    def snapshot(self) -> dict[str, Any]:
        where = {"epoch": self.epoch, "part": self.part, "step": self.step, "phase": self.phase}
        if self.phase == "loading" and self.position is not None:
            try:
                where["loader"] = self.position()
            except Exception:  # noqa: BLE001 - a position is a hint; its absence must not stop the heartbeat
                where["loader"] = None
        return where


def progress_key(beat: dict[str, Any]) -> tuple:
    """How far a rank has got: epoch, part, step, phase, in the order a step goes through them."""
    part = PARTS.index(beat["part"]) if beat.get("part") in PARTS else 0
    phase = PHASES.index(beat["phase"]) if beat.get("phase") in PHASES else 0
    return beat.get("epoch", 0), part, beat.get("step", 0), phase


def stuck_ranks(beats: dict[int, dict[str, Any] | None]) -> list[int]:
    """The ranks the others wait for: of the ranks not waiting in a collective, those furthest behind; a rank that
    never reported is stuck; when every rank waits in a collective, all of them."""
    silent = sorted(r for r, b in beats.items() if b is None)
    if silent:
        return silent
    working = {r: b for r, b in beats.items() if b["phase"] != "collective"}
    if not working:
        return sorted(beats)
    least = min(progress_key(b) for b in working.values())
    return sorted(r for r, b in working.items() if progress_key(b) == least)


class _LocalStore:
    """The store of a world of one: the same calls as a TCPStore, in memory."""

    def __init__(self):
        self.values: dict[str, bytes] = {}

    def set(self, key: str, value) -> None:
        self.values[key] = value.encode() if isinstance(value, str) else value

    def get(self, key: str) -> bytes:
        return self.values[key]

    def check(self, keys: Sequence[str]) -> bool:
        return all(k in self.values for k in keys)


class Watchdog:
    """One per rank for the length of a run: ``start`` (every rank, collectively) and ``stop``."""

    def __init__(self, dist, heartbeat: Heartbeat, *, seconds: float, output_dir: str | Path,
                 exit_process: Callable[[int], Any] | None = None):
        self.dist, self.heartbeat, self.seconds, self.output_dir = dist, heartbeat, seconds, Path(output_dir)
        self.interval = min(1.0, max(0.05, seconds / 10))
        self._exit = exit_process or _end
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.store = None

    def start(self) -> "Watchdog":
        if self.seconds <= 0:
            return self
        self.store = self._open_store()
        if self.store is None:
            return self
        self._thread = threading.Thread(target=self._run, name="bigtrain-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _open_store(self):
        """Rank 0 serves a TCPStore on a free port (on every interface); the others learn its host's addresses over
        the run's own backend and connect to the first that answers (loopback when on rank 0's host). Every rank
        then says whether it got there: if one did not, none keeps a watchdog (rank 0 would otherwise take the
        silent rank for a stuck one), and rank 0 says so."""
        dist = self.dist
        if dist.size == 1:
            return _LocalStore()
        master = TCPStore("127.0.0.1", 0, dist.size, True, wait_for_workers=False) if dist.rank == 0 else None
        host, addresses, port = dist.broadcast_object(
            (socket.gethostname(), _addresses(), master.port) if master else None, name="watchdog_store")
        store, problem = master, ""
        if master is None:
            candidates = ["127.0.0.1", *addresses] if host == socket.gethostname() else addresses
            for address in candidates:
                try:
                    store = TCPStore(address, port, dist.size, False, timeout=timedelta(seconds=CONNECT_S))
                    break
                except Exception as exc:  # noqa: BLE001 - the next address, or no watchdog (said below)
                    problem = f"{address}:{port}: {exc}"
        missing = dist.allreduce_sum(torch.tensor([0.0 if store is not None else 1.0]), name="watchdog_ready")
        if float(missing[0]) > 0:
            if dist.rank == 0:
                log.warning("train.watchdog_seconds: %d rank(s) cannot reach rank 0 (%s, addresses %s): no watchdog "
                            "in this run", int(missing[0]), host, ", ".join(addresses))
            elif store is None:
                log.warning("watchdog: cannot reach rank 0's store (%s)", problem)
            return None
        return store

    def _run(self) -> None:
        seen: dict[int, tuple[Any, float]] = {}
        began = time.monotonic()
        rank = self.dist.rank
        while not self._stop.wait(self.interval):
            try:
                beat = self.heartbeat.snapshot()
                self.store.set(f"beat/{rank}", json.dumps({**beat, "host": socket.gethostname(),
                                                           "pid": os.getpid()}))
                if self.store.check(["hang"]) and rank != 0:
                    return self._give_stacks_and_exit(rank)
                if rank == 0 and self._judge(seen, began):
                    return None
            except Exception as exc:  # noqa: BLE001 - never crash the run from here
                if not self._stop.is_set():  # else the store went away as the run ended
                    log.warning("watchdog stopped (%s: %s): this rank is no longer watched", type(exc).__name__, exc)
                return

    def _judge(self, seen: dict[int, tuple[Any, float]], began: float) -> bool:
        """Rank 0: True when it found the run hung (and ended it)."""
        now = time.monotonic()
        beats: dict[int, dict[str, Any] | None] = {}
        for r in range(self.dist.size):
            beat = json.loads(self.store.get(f"beat/{r}")) if self.store.check([f"beat/{r}"]) else None
            beats[r] = beat
            key = None if beat is None else (progress_key(beat), beat["phase"])
            if r not in seen or seen[r][0] != key:
                seen[r] = (key, now)
        last = max([t for _, t in seen.values()] + [began])
        if now - last < self.seconds:
            return False
        self._declare(beats, idle={r: round(now - t, 1) for r, (_, t) in seen.items()})
        return True

    def _declare(self, beats: dict[int, dict[str, Any] | None], idle: dict[int, float]) -> None:
        """Rank 0: hang.json, the stacks of every rank, one log line, exit."""
        stuck = stuck_ranks(beats)
        report = {"watchdog_seconds": self.seconds, "stuck_ranks": stuck, "exit_code": EXIT_HUNG,
                  "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "ranks": [{"rank": r, "idle_s": idle.get(r), **(beats[r] or {"phase": "never reported"})}
                            for r in sorted(beats)]}
        path, stacks = self.output_dir / HANG_FILE, self.output_dir / STACKS_DIR
        missing = set(range(1, self.dist.size))
        try:  # the files are what a person reads first; the run ends whether they could be written or not
            atomic.write_json(path, report)  # first: the other ranks' exits may end this process soon
            self.store.set("hang", json.dumps(stuck))
            stacks.mkdir(parents=True, exist_ok=True)
            (stacks / rank_file(0)).write_text(_own_stacks())
            deadline = time.monotonic() + STACKS_WAIT_S
            while missing and time.monotonic() < deadline:
                for r in sorted(missing):
                    if self.store.check([f"stacks/{r}"]):
                        (stacks / rank_file(r)).write_bytes(self.store.get(f"stacks/{r}"))
                        missing.discard(r)
                time.sleep(0.1)
            written = f"wrote {path} and the stacks of {counted(self.dist.size - len(missing), 'rank')} in {stacks}"
        except Exception as exc:  # noqa: BLE001 - said in the one line below
            written = f"could not write {path} or its stacks ({type(exc).__name__}: {exc})"
        where = "; ".join(_where(r, beats[r]) for r in stuck)
        try:
            log.error("watchdog: no rank made progress for %gs: stuck %s; %s; exiting with %d", self.seconds, where,
                      written, EXIT_HUNG)
            self.store.set("hang_written", "1")
        finally:
            _flush()
            self._exit(EXIT_HUNG)

    def _give_stacks_and_exit(self, rank: int) -> None:
        """A rank other than 0, once rank 0 found the run hung: its stacks to rank 0, then the end."""
        self.store.set(f"stacks/{rank}", _own_stacks())
        deadline = time.monotonic() + EXIT_WAIT_S
        while time.monotonic() < deadline and not self._store_says("hang_written"):
            time.sleep(0.1)
        _flush()
        self._exit(EXIT_HUNG)

    def _store_says(self, key: str) -> bool:
        try:
            return self.store.check([key])
        except Exception:  # noqa: BLE001 - rank 0 has gone: it has finished
            return True


def _end(code: int) -> None:
    """The process's end, from the watchdog's thread: ``os._exit``, since the training thread may be stuck in a
    collective that no exception would reach."""
    os._exit(code)


def _where(rank: int, beat: dict[str, Any] | None) -> str:
    if beat is None:
        return f"rank {rank} (never reported)"
    text = f"rank {rank} at epoch {beat['epoch'] + 1} {beat['part']} step {beat['step']} ({beat['phase']}"
    loader = beat.get("loader")
    if loader and loader.get("row_groups"):
        path, group = loader["row_groups"][0]
        text += f", its loader on {loader['split']} batch {loader['batch'] + 1}: {path} row group {group}"
    return text + ")"


def _own_stacks() -> str:
    """Every thread's Python stack of this process, as faulthandler writes them (it needs a file)."""
    with tempfile.TemporaryFile("w+") as file:
        faulthandler.dump_traceback(file, all_threads=True)
        file.seek(0)
        return f"pid {os.getpid()} on {socket.gethostname()}\n" + file.read()


def _addresses() -> list[str]:
    """The addresses other hosts may reach this one by: the launcher's name for it (torchrun's MASTER_ADDR), the
    host's name, and its interfaces' IPv4 addresses (loopback last)."""
    found = [a for a in (os.environ.get("MASTER_ADDR"), socket.gethostname()) if a]
    try:
        import psutil  # a dependency of Petastorm's, on every training host

        found += [a.address for nic in psutil.net_if_addrs().values() for a in nic if a.family == socket.AF_INET]
    except ImportError:
        pass
    unique = list(dict.fromkeys(found))
    local = [a for a in unique if a.startswith("127.") or a == "localhost"]
    return [a for a in unique if a not in local] + local


def _flush() -> None:
    """What the logs and streams hold, written out before ``os._exit``; a handler that fails (its stream closed)
    is passed over: nothing may keep the run from ending."""
    for target in (*logging.getLogger().handlers, sys.stdout, sys.stderr):
        try:
            target.flush()
        except Exception:  # noqa: BLE001 - see above
            pass
