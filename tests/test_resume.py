"""Exact resume after SIGKILL at a random step, and SIGTERM (preemption): save, exit cleanly, resume.

Runs are subprocesses (`python -m pjax.train`). They use a constant learning rate, so a run may stop
at any step and be continued with another `train.steps`: the losses of steps 1..40 of every variant
must equal those of one uninterrupted 40-step run, bit for bit (CPU).
"""

import os
import random
import signal

import pytest

from tests.procs import losses, run, spawn, tiny_flags, train_command, wait_for_step

STEPS = 40


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One synthetic-task cache (tokenizer) for every run of this module."""
    return tmp_path_factory.mktemp("cache")


def _flags(root, name, steps, cache, **kw):
    return tiny_flags(root / name, cache, steps, **{"optim__schedule": "constant", "train__save_every": 3, **kw})


@pytest.fixture(scope="module")
def parent(tmp_path_factory, cache):
    """An SFT export for the DPO runs."""
    tmp = tmp_path_factory.mktemp("parent")
    run(train_command("sft_tiny.py", tiny_flags(tmp / "sft", cache, 4)), tmp / "sft.log")
    return tmp / "sft" / "export"


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory, parent, cache):
    """Per-step losses of one uninterrupted 40-step run of each phase."""
    out = {}
    for phase in ("sft", "dpo"):
        tmp = tmp_path_factory.mktemp(f"reference_{phase}")
        extra = {"init_from": parent} if phase == "dpo" else {}
        run(train_command(f"{phase}_tiny.py", _flags(tmp, "reference", STEPS, cache, **extra)), tmp / "reference.log")
        out[phase] = losses(tmp / "reference")
        assert sorted(out[phase]) == list(range(1, STEPS + 1))
    return out


@pytest.mark.parametrize("phase", ["sft", "dpo"])
def test_sigkill_at_a_random_step_then_resume_is_bit_exact(tmp_path, cache, parent, reference_losses, phase):
    config = f"{phase}_tiny.py"
    extra = {"init_from": parent} if phase == "dpo" else {}
    expected = reference_losses[phase]

    seed = int.from_bytes(os.urandom(4), "little")
    kill_after = random.Random(seed).randint(2, 30)
    workdir = tmp_path / "killed"
    proc = spawn(train_command(config, _flags(tmp_path, "killed", 100_000, cache, **extra)), tmp_path / "killed.log")
    wait_for_step(proc, workdir, kill_after)
    proc.send_signal(signal.SIGKILL)  # no chance to save: possibly in the middle of an async checkpoint
    proc.wait(30)
    killed_at = max(losses(workdir))
    finished = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    run(train_command(config, _flags(tmp_path, "killed", STEPS, cache, **extra)), tmp_path / "resumed.log")
    log = (tmp_path / "resumed.log").read_text()
    # an async save cut off by the kill never became a checkpoint: the run resumes from the one before
    expected_source = (f"resume: own checkpoint {workdir / 'checkpoints'} (step {finished[-1]})" if finished else
                       "resume: no own checkpoint and no parent export" if phase == "sft" else
                       "resume: no own checkpoint; initialising from parent export")
    assert expected_source in log, (seed, killed_at, finished, log[-3000:])
    got = losses(workdir)
    assert got == expected, (f"seed {seed}: killed after step {killed_at}; first differing step "
                             f"{next(s for s in expected if got.get(s) != expected[s])}")


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, cache, reference_losses):
    expected = reference_losses["sft"]
    workdir = tmp_path / "preempted"
    proc = spawn(train_command("sft_tiny.py", _flags(tmp_path, "preempted", 100_000, cache, train__save_every=100_000)),
                 tmp_path / "preempted.log")
    wait_for_step(proc, workdir, 5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    log = (tmp_path / "preempted.log").read_text()
    assert "SIGTERM: saving a checkpoint" in log and "preempted (SIGTERM) at step" in log, log[-3000:]
    stopped = max(losses(workdir))
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [stopped]  # no periodic save was due: this is the preemption save
    assert not (workdir / "export").exists()  # an unfinished phase hands nothing on
    if stopped >= STEPS:
        pytest.skip(f"SIGTERM arrived only after step {stopped}")
    run(train_command("sft_tiny.py", _flags(tmp_path, "preempted", STEPS, cache)), tmp_path / "resumed.log")
    assert f"resume: own checkpoint {workdir / 'checkpoints'} (step {stopped})" in (tmp_path / "resumed.log").read_text()
    assert losses(workdir) == expected
    assert (workdir / "export" / "pjax.json").exists()
