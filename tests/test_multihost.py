"""Multi-host runs as local processes (`jax.distributed` over 127.0.0.1, CPU devices): two processes
of 4 devices against one of 8, and what happens when a peer dies."""

import signal
import time

import numpy as np
import pytest

from tests.procs import (finish, free_port, losses, multi_process, spawn, task_cache, tiny_flags, train_command,
                         wait_all, wait_for_step)


def test_two_processes_match_one_process_for_sft_and_dpo(tmp_path):
    """Same global batches, same mesh shape (1, 8, 1): the loss trajectories agree to float32 rounding
    (the reductions are ordered differently across processes). Each process feeds only its own rows
    (`Setup.local_rows`); a process feeding the wrong rows would change the losses. DPO reads a JSONL
    file: process 0 encodes it into the memory-mapped cache, which process 1 then reads.

    The one-process side finds its coordinator in JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID, as a cluster launcher sets them (one process of 8 devices: the same numbers as
    without `jax.distributed`). It trains beside the two-process run of the same phase, without
    TensorBoard (process 0 of the two writes it)."""
    import json

    from pjax.data.tasks import synthetic

    cache, steps = task_cache(tmp_path / "cache"), 4
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in synthetic.preference_records(
        synthetic.SyntheticConfig(num_pairs=64, cache_dir=str(cache)), "PAIR")))
    for phase, config in (("sft", "sft_tiny.py"), ("dpo", "dpo_tiny.py")):
        one, two = tmp_path / f"one_{phase}", tmp_path / f"two_{phase}"
        data = {} if phase == "sft" else {"data__path": pairs}
        parent = {} if phase == "sft" else {"init_from": tmp_path / "one_sft" / "export"}
        env = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}
        one_log = tmp_path / f"one_{phase}.log"
        single = spawn(train_command(config, tiny_flags(one, cache, steps, distributed__cpu_devices=8,
                                                        logging__tensorboard=False, **parent, **data)), one_log, env)
        # the two-process DPO reads precomputed reference log-probs (one pass, gathered on every host);
        # the one-process DPO runs the reference forward in the step: both must give the same losses.
        # Its own data cache: the two processes encode the file afresh.
        parent = {} if phase == "sft" else {"init_from": tmp_path / "two_sft" / "export", "data__precompute_ref": True,
                                            "data__cache_dir": tmp_path / "cache_two"}
        logs = [tmp_path / f"two_{phase}_{i}.log" for i in range(2)]
        try:
            wait_all(multi_process(config, tiny_flags(two, cache, steps, **{**data, **parent}), logs, 4), logs)
            finish(single, one_log)
        finally:
            single.kill()
        assert "distributed (env): process 0 of 1, 8 local of 8 devices" in one_log.read_text()
        expected, got = losses(one), losses(two)
        assert sorted(got) == list(range(1, steps + 1)) == sorted(expected)
        np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(expected)],
                                   rtol=2e-6, atol=1e-6)
        assert (two / "export" / "pjax.json").exists()
        leader, other = (log.read_text() for log in logs)
        assert "INFO [0] pjax: exported params" in leader  # multi-process lines carry the process index
        if phase == "dpo":
            assert "INFO [0] pjax: data: encoded 64 rows" in leader
        assert "[1] pjax" not in other and '"final"' not in other  # process 1 neither logs nor prints


@pytest.mark.parametrize("victim", [1, 0], ids=["worker_dies", "coordinator_dies"])
def test_a_dead_peer_ends_the_other_process(tmp_path, victim):
    """SIGKILL one process mid-run: with the default heartbeat timeout the survivor exits non-zero,
    saying why, within 60 s, instead of hanging in a collective."""
    workdir = tmp_path / "run"
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    flags = tiny_flags(workdir, tmp_path / "cache", 100_000, train__save_every=100_000, logging__tensorboard=False)
    procs = multi_process("sft_tiny.py", flags, logs, 4)
    try:
        wait_for_step(procs[0], workdir, 3, timeout=180)
        procs[victim].kill()
        killed_at = time.monotonic()
        survivor = procs[1 - victim]
        code = survivor.wait(timeout=90)
        elapsed = time.monotonic() - killed_at
    finally:
        for p in procs:
            p.kill()
    text = logs[1 - victim].read_text()
    print(f"survivor (process {1 - victim}) exited {code} {elapsed:.1f} s after the kill")
    assert code != 0, text[-3000:]
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert "detected fatal errors. This most likely indicates that another task died" in text, text[-3000:]
    if victim == 1:  # named before JAX's abort, which names no one
        assert "distributed: process 1 of 2 has shown no sign of life" in text, text[-3000:]
    else:  # the coordinator (process 0) gone: JAX aborts at once, saying so
        assert "remote target coordination_service" in text and "Socket closed" in text, text[-3000:]


def test_a_peer_that_never_connects_ends_the_other_within_a_minute_naming_it(tmp_path):
    """Process 1 of 2 never starts: process 0, with the default start-up wait, exits non-zero within 70 s,
    its log naming process 1 first."""
    workdir = tmp_path / "run"
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    flags = tiny_flags(workdir, tmp_path / "cache", 4, logging__tensorboard=False)
    port = free_port()
    started = time.monotonic()
    proc = spawn(train_command("sft_tiny.py", flags + [
        f"--config.distributed.coordinator=127.0.0.1:{port}", "--config.distributed.num_processes=2",
        "--config.distributed.process_id=0", "--config.distributed.cpu_devices=4"]), logs[0])
    try:
        code = proc.wait(timeout=150)
    finally:
        proc.kill()
    elapsed = time.monotonic() - started
    text = logs[0].read_text()
    assert code != 0, text[-3000:]
    assert elapsed < 70 + 20, f"took {elapsed:.0f} s"  # the 60 s wait, plus start-up
    assert "process 0 of 2 gives up after distributed.init_timeout_s=60 s: process 1 never reached the " \
           f"coordinator 127.0.0.1:{port}" in text, text[-3000:]


def test_sigterm_on_one_host_stops_every_host_at_the_same_saved_step(tmp_path):
    """A TPU pod's preemption notice reaches some hosts only: JAX's preemption service agrees on a
    step, every process saves that checkpoint together and exits cleanly (status 0)."""
    workdir = tmp_path / "run"
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    flags = tiny_flags(workdir, tmp_path / "cache", 100_000, train__save_every=100_000)
    procs = multi_process("sft_tiny.py", flags, logs, 4)
    try:
        wait_for_step(procs[0], workdir, 3, timeout=180)
        procs[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=90) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    stopped = max(losses(workdir))
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [stopped]
    assert f"preempted (SIGTERM) at step {stopped}" in logs[1].read_text()
    assert '"preempted": true' in logs[0].read_text()
    assert not (workdir / "export").exists()
