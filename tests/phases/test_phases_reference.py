"""Precomputed reference log-probs (`data.precompute_ref`): cached beside the encoded data, where every
host sees them, and whether the cache exists decided once for all processes."""

from __future__ import annotations

import numpy as np
import pytest

from pjax import distributed
from pjax.phases import reference
from tests.procs import free_port, spawn, task_cache, tiny_flags, train_command, wait_all


def test_a_cache_only_process_0_sees_is_an_error_not_a_hang(tmp_path, monkeypatch):
    """Process 0 decides; a process that does not see the file process 0 found fails, naming the file."""
    from configs import dpo_tiny

    cfg = dpo_tiny.get_config()
    cfg.data.cache_dir = str(tmp_path / "cache")
    arrays = {"tokens": np.zeros((4, 2, 8), np.int32), "mask": np.ones((4, 2, 8), np.int32)}
    path = reference.reference_cache_path(cfg, arrays)
    assert path.parent == tmp_path / "cache" / "reference"
    monkeypatch.setattr(distributed, "broadcast_string", lambda text: "1")  # process 0 has it

    class Setup:
        config = cfg

    with pytest.raises(FileNotFoundError, match=f"reference cache {path}: process 0 has it"):
        reference.precomputed_reference(Setup(), None, arrays)


def test_two_processes_with_host_local_caches_resume_with_the_precomputed_reference(tmp_path):
    """Each process has its own task cache ($PJAX_CACHE, like ~/.cache on separate hosts). The reference
    cache lives beside the workdir (a filesystem both see), so on resume both read it: before, process 0
    alone found its own copy and skipped the collective pass the other entered, and the run hung."""
    workdir, shared = tmp_path / "run", tmp_path / "shared-task"
    task_cache(shared)
    flags = tiny_flags(workdir, "", 2, init_from="", data__precompute_ref=True, logging__tensorboard=False, train__save_every=2)

    def run(steps: int, tag: str) -> list:
        port, logs = free_port(), [tmp_path / f"{tag}{i}.log" for i in range(2)]
        cmd = lambda i: train_command("dpo_tiny.py", [*flags, f"--config.train.steps={steps}",  # noqa: E731
                                                      f"--config.distributed.coordinator=127.0.0.1:{port}",
                                                      "--config.distributed.num_processes=2",
                                                      f"--config.distributed.process_id={i}",
                                                      "--config.distributed.cpu_devices=2"])
        # host-local task caches, each with the same tokenizer (trained once, copied)
        envs = []
        for i in range(2):
            local = tmp_path / f"host{i}"
            (local / "synthetic").mkdir(parents=True, exist_ok=True)
            for f in shared.iterdir():
                (local / "synthetic" / f.name).write_bytes(f.read_bytes())
            envs.append({"PJAX_CACHE": str(local)})
        procs = [spawn(cmd(i), log, envs[i]) for i, log in enumerate(logs)]
        wait_all(procs, logs, timeout=240)  # a hang fails here
        return logs

    run(2, "first")
    cached = sorted((tmp_path / ".pjax-data" / "reference").glob("ref-logps-*.npz"))
    assert len(cached) == 1
    before = cached[0].stat().st_mtime_ns
    assert not list((tmp_path / "host0").rglob("ref-logps-*")) and not list((tmp_path / "host1").rglob("ref-logps-*"))
    logs = run(4, "resume")
    assert cached[0].stat().st_mtime_ns == before  # read, not computed again
    import json

    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4], [log.read_text()[-2000:] for log in logs]
