"""Multi-host start-up on JAX's multi-controller runtime (`jax.distributed`).

Every process runs the same program; `initialize(config)` connects them before JAX's backend starts:

* explicit: `distributed.coordinator=host:port` with `num_processes` and `process_id` (or the
  `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` environment variables);
* Cloud TPU pods, SLURM and Open MPI jobs: detected from the environment; JAX reads the coordinator and
  process ids there itself;
* otherwise one process (nothing to connect).

If a peer dies, JAX's coordination service notices the missing heartbeats and ends every other
process with "Terminating process because the JAX distributed service detected fatal errors ... another
task died", after at most `distributed.heartbeat_timeout_s`: a run never hangs on a dead peer.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import signal
import threading
import time
from pathlib import Path

import jax
import numpy as np
from ml_collections import ConfigDict

log = logging.getLogger("pjax")


def cluster_environment() -> str | None:
    """The multi-process environment this process runs in, or None for a single process."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "env"
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "openmpi"
    on_tpu_vm = glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
    if on_tpu_vm and importlib.util.find_spec("libtpu") is not None:
        return "tpu"  # a single-host TPU VM is fine too: JAX then finds one process
    return None


def initialize(config: ConfigDict) -> None:
    """Connect this process to the others (see the module docstring); idempotent.

    Must run before anything touches JAX's backend (devices, arrays, jit), as `pjax.train.main` (the CLI) does.
    """
    d = config.distributed
    if d.cpu_devices:
        jax.config.update("jax_num_cpu_devices", int(d.cpu_devices))
    if jax.distributed.is_initialized():
        return
    timeouts = dict(initialization_timeout=int(d.init_timeout_s), heartbeat_timeout_seconds=int(d.heartbeat_timeout_s))
    connected = threading.Event()

    def say_who_is_missing(n: int, i: int, where: str) -> None:
        """JAX aborts the process when the start-up wait ends, naming no one: say it first, in one line."""
        if not connected.wait(max(1.0, float(d.init_timeout_s) - 1.0)):
            others = [p for p in range(n) if p != i]
            missing = f"process {others[0]}" if len(others) == 1 else \
                f"one or more of processes {others}" if others else "some process of the cluster"
            me = f"process {i} of {n}" if n > 0 else "this process"
            log.error("distributed: %s gives up after distributed.init_timeout_s=%s s: %s never reached the "
                      "coordinator %s", me, d.init_timeout_s, missing, where)

    def connect(address: str | None, n: int, i: int) -> None:
        threading.Thread(target=say_who_is_missing, args=(n, i, address or "(from the environment)"),
                         daemon=True).start()
        try:
            if address is None:
                jax.distributed.initialize(**timeouts)
            else:
                jax.distributed.initialize(address, n, i, **timeouts)
        finally:  # connected, or failed with an error of its own
            connected.set()
    if d.coordinator:
        if d.num_processes <= 0 or d.process_id < 0:
            raise ValueError(f"distributed.coordinator={d.coordinator!r} needs distributed.num_processes "
                             f"(got {d.num_processes}) and distributed.process_id (got {d.process_id})")
        if d.process_id >= d.num_processes:
            raise ValueError(f"distributed.process_id={d.process_id} must be below "
                             f"distributed.num_processes={d.num_processes}")
        connect(d.coordinator, int(d.num_processes), int(d.process_id))
        where = "explicit"
    else:
        where = cluster_environment()
        if where is None:
            return
        if where == "env":  # JAX itself reads only the coordinator address from the environment
            env = {k: os.environ.get(k, "") for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")}
            try:
                n, i = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
            except ValueError:
                raise ValueError(f"JAX_COORDINATOR_ADDRESS={env['JAX_COORDINATOR_ADDRESS']!r} needs integer "
                                 f"JAX_NUM_PROCESSES (got {env['JAX_NUM_PROCESSES']!r}) and JAX_PROCESS_ID "
                                 f"(got {env['JAX_PROCESS_ID']!r})") from None
            connect(env["JAX_COORDINATOR_ADDRESS"], n, i)
        else:
            connect(None, 0, -1)
    if jax.process_index() == 0:
        log.info("distributed (%s): process %d of %d, %d local of %d devices", where, jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def is_leader() -> bool:
    """Process 0 logs, writes metrics and prints progress."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches this point (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class PreemptionWatch:
    """SIGTERM (the preemption notice of Cloud TPUs and most schedulers) -> save and stop.

    With one process a SIGTERM handler sets a flag. With several, JAX's preemption service (started
    by `jax.distributed.initialize`) catches the signal on whichever host receives it and agrees on a
    step at which every host stops: `reached(step)` must then be called at every step by all.
    """

    def __init__(self) -> None:
        self.multi_process = jax.process_count() > 1
        self.signalled = False
        self._previous = None
        if not self.multi_process and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self.signalled = True
        log.warning("SIGTERM: saving a checkpoint after the current step, then stopping")

    def reached(self, step: int) -> bool:
        if self.multi_process:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.signalled

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class PeerWatch:
    """Names a peer that stopped: with several processes each touches `<workdir>/.pjax-alive/process-<i>`
    every `interval` seconds, and one whose file has not changed for `stale_after` seconds is named in an
    error line (JAX's own abort, a few seconds later, names no one). It only logs: a slow shared
    filesystem must not stop a healthy run."""

    def __init__(self, workdir: os.PathLike, stale_after: float, interval: float = 1.0):
        self.active = jax.process_count() > 1
        if not self.active:
            return
        self.directory = Path(workdir) / ".pjax-alive"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.me, self.n = jax.process_index(), jax.process_count()
        self.stale_after, self.interval = stale_after, interval
        self._stop = threading.Event()
        self._named: set[int] = set()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pjax-peer-watch")
        self._thread.start()

    def _run(self) -> None:
        mine = self.directory / f"process-{self.me}"
        started = time.time()
        while not self._stop.wait(self.interval):
            now = time.time()
            mine.touch()
            for peer in range(self.n):
                if peer == self.me or peer in self._named:
                    continue
                path = self.directory / f"process-{peer}"
                last = path.stat().st_mtime if path.exists() else started
                if now - last > self.stale_after:
                    self._named.add(peer)
                    log.error("distributed: process %d of %d has shown no sign of life for %.0f s (it died or "
                              "hangs); JAX ends this process (%d) next if it is gone", peer, self.n, now - last,
                              self.me)

    def close(self) -> None:
        if self.active:
            self._stop.set()


def broadcast_string(text: str) -> str:
    """Process 0's `text` on every process (as is with one process)."""
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    data = np.zeros(256, np.uint8)
    raw = text.encode()[:256]
    data[:len(raw)] = np.frombuffer(raw, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(data))
    return bytes(out[out > 0]).decode()


def max_over_processes(value: int) -> int:
    """The largest of every process's `value` (as is with one process)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))
