"""Exact resume after SIGKILL at a random step, and SIGTERM (preemption): save, exit cleanly, resume.

Runs are subprocesses (`python -m pjax.train`). They use a constant learning rate, so a run may stop
at any step and be continued with another `train.steps`: the losses of steps 1..24 of every variant
must equal those of one uninterrupted 24-step run, bit for bit (CPU). The uninterrupted runs go in
the background while a test's interrupted run trains beside them (the runs are single-threaded).
TensorBoard is off here (its resume: tests/test_metrics.py); the metrics are read from metrics.jsonl,
where a run resumed from (`checkpoint:<step>`, `export:<dir>`, `fresh`) from its export's metadata.
"""

import json
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

from pjax import checkpoint
from tests.procs import finish, losses, run, spawn, task_cache, tiny_flags, train_command, wait_for_step

STEPS = 24


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One synthetic-task cache (tokenizer) for every run of this module."""
    return task_cache(tmp_path_factory.mktemp("cache"))


def _resumed_from(workdir: Path) -> str:
    """The source the run that wrote `workdir`'s export started from (`pjax.core.init.Start.source`)."""
    return checkpoint.export_metadata(workdir / "export")["resumed_from"]


def _cli_summary(log: Path) -> dict:
    """What `python -m pjax.train` printed at its end: the export, whether it was preempted, the last row."""
    text = log.read_text()
    return json.JSONDecoder().raw_decode(text, text.rindex('{\n  "export"'))[0]


def _flags(root, name, steps, cache, **kw):
    return tiny_flags(root / name, cache, steps, **{"optim__schedule": "constant", "train__save_every": 3,
                                                    "logging__tensorboard": False, **kw})


class References:
    """One uninterrupted STEPS-step run of each phase, started when first asked for; the DPO run starts
    from the SFT run's export (which is also the parent of the interrupted DPO runs)."""

    def __init__(self, root: Path, cache: Path):
        self.root, self.cache = root, cache
        self.procs: dict[str, subprocess.Popen] = {}
        self.done: dict[str, dict[int, float]] = {}

    def start(self, phase: str) -> None:
        if phase not in self.procs:
            extra = {"init_from": self.parent()} if phase == "dpo" else {}
            self.procs[phase] = spawn(train_command(f"{phase}_tiny.py", _flags(self.root, phase, STEPS, self.cache,
                                                                               **extra)), self.root / f"{phase}.log")

    def losses(self, phase: str) -> dict[int, float]:
        if phase not in self.done:
            self.start(phase)
            finish(self.procs[phase], self.root / f"{phase}.log")
            self.done[phase] = losses(self.root / phase)
            assert sorted(self.done[phase]) == list(range(1, STEPS + 1))
        return self.done[phase]

    def parent(self) -> Path:
        self.losses("sft")
        return self.root / "sft" / "export"

    def close(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def references(tmp_path_factory, cache):
    refs = References(tmp_path_factory.mktemp("reference"), cache)
    yield refs
    refs.close()


@pytest.mark.parametrize("phase", ["sft", "dpo"])
def test_sigkill_at_a_random_step_then_resume_is_bit_exact(tmp_path, cache, references, phase):
    config = f"{phase}_tiny.py"
    extra = {"init_from": references.parent()} if phase == "dpo" else {}
    references.start(phase)  # trains beside the run below

    seed = int.from_bytes(os.urandom(4), "little")
    kill_after = random.Random(seed).randint(2, STEPS - 6)
    workdir = tmp_path / "killed"
    proc = spawn(train_command(config, _flags(tmp_path, "killed", 100_000, cache, **extra)), tmp_path / "killed.log")
    wait_for_step(proc, workdir, kill_after)
    proc.send_signal(signal.SIGKILL)  # no chance to save: possibly in the middle of an async checkpoint
    proc.wait(30)
    killed_at = max(losses(workdir))
    finished = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    run(train_command(config, _flags(tmp_path, "killed", STEPS, cache, **extra)), tmp_path / "resumed.log")
    # an async save cut off by the kill never became a checkpoint: the run resumes from the one before
    expected_source = (f"checkpoint:{finished[-1]}" if finished else "fresh" if phase == "sft" else
                       f"export:{extra['init_from']}")
    assert _resumed_from(workdir) == expected_source, (seed, killed_at, finished,
                                                       (tmp_path / "resumed.log").read_text()[-3000:])
    got, expected = losses(workdir), references.losses(phase)
    assert got == expected, (f"seed {seed}: killed after step {killed_at}; first differing step "
                             f"{next(s for s in expected if got.get(s) != expected[s])}")


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, cache, references):
    references.start("sft")
    workdir = tmp_path / "preempted"
    proc = spawn(train_command("sft_tiny.py", _flags(tmp_path, "preempted", 100_000, cache, train__save_every=100_000)),
                 tmp_path / "preempted.log")
    wait_for_step(proc, workdir, 5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    stopped = max(losses(workdir))
    summary = _cli_summary(tmp_path / "preempted.log")
    assert summary["preempted"] is True and summary["export"] is None and summary["final"]["step"] == stopped
    log = (tmp_path / "preempted.log").read_text()
    # these warnings are the product: whoever reads the log must see that the run was preempted, saved
    # and is to be run again (the exit status is 0)
    assert "SIGTERM: saving a checkpoint" in log and "preempted (SIGTERM) at step" in log, log[-3000:]
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [stopped]  # no periodic save was due: this is the preemption save
    assert not (workdir / "export").exists()  # an unfinished phase hands nothing on
    if stopped >= STEPS:
        pytest.skip(f"SIGTERM arrived only after step {stopped}")
    run(train_command("sft_tiny.py", _flags(tmp_path, "preempted", STEPS, cache)), tmp_path / "resumed.log")
    assert _resumed_from(workdir) == f"checkpoint:{stopped}"
    assert losses(workdir) == references.losses("sft")
    summary = _cli_summary(tmp_path / "resumed.log")
    assert summary["preempted"] is False and summary["export"] == str(workdir / "export")
    assert summary["final"]["step"] == STEPS
