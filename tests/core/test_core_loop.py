"""The phase frame (`pjax.core.loop`) through an offline phase: resume order (own checkpoint first),
`train.steps` below the checkpoint, and a non-finite state that is never saved. (Preemption, SIGTERM and
SIGKILL run in subprocesses: tests/test_resume.py.)"""

from pathlib import Path

import pytest

import pjax
from pjax.core import loop


def test_resume_prefers_own_checkpoint_then_continues(tiny_configs):
    sft, _ = tiny_configs
    sft.train.steps = 4
    assert pjax.train(sft)["source"] == "fresh"
    sft.train.steps = 6
    out = pjax.train(sft)
    assert out["source"] == "checkpoint:4"
    assert [row["step"] for row in out["history"]] == [5, 6]


def test_fewer_steps_than_the_checkpoint_is_an_error(tiny_configs):
    sft, _ = tiny_configs
    pjax.train(sft)
    sft.train.steps = 2
    with pytest.raises(ValueError, match="train.steps=2 is below the 4 done in the checkpoint"):
        pjax.train(sft)


def test_first_nonfinite_names_the_unit_the_step_and_the_metrics():
    ok = {"loss": 1.0, "grad_norm": 1.0, "params_finite": 1.0, "x": 0.0}
    fetched = [(1, 1, ok), (1, 2, ok), (2, 3, {**ok, "x": float("inf")}),  # another metric alone does not stop
               (2, 4, {**ok, "grad_norm": float("nan"), "x": float("nan")}), (3, 5, {**ok, "loss": float("nan")})]
    assert loop.first_nonfinite(fetched[:3]) is None
    assert loop.first_nonfinite(fetched) == (2, 4, ["grad_norm", "x"])
    assert loop.first_nonfinite([(7, 13, {**ok, "params_finite": 0.0})]) == (7, 13, ["params (after the update)"])


def test_non_finite_state_is_never_saved(tiny_configs):
    """lr 1e30: step 1 is finite, its update is not; the gradient of step 2 is NaN. Checked at the
    next save step (3), the run stops naming step 2, the metric and the last good checkpoint (1)."""
    sft, _ = tiny_configs
    sft.optim.lr = 1e30
    sft.optim.grad_clip = 0.0
    sft.train.steps, sft.train.log_every, sft.train.save_every = 6, 100, 3
    sft.train.async_checkpoint = False
    sft.train.max_update_ratio = 0.0  # the explosion guard off: only non-finite values stop the run
    ckdir = Path(sft.workdir) / "checkpoints"
    with pytest.raises(FloatingPointError, match=r"non-finite .*grad_norm.* at step 2: stopped without saving\. "
                                                 r"Last good checkpoint: none yet"):
        pjax.train(sft)
    assert not ckdir.exists() or not any(p.name.isdigit() for p in ckdir.iterdir())
    sft.train.save_every = 1  # now step 1 is saved before the NaN of step 2 shows
    with pytest.raises(FloatingPointError, match=f"at step 2: .* Last good checkpoint: step 1 in {ckdir}"):
        pjax.train(sft)
    assert sorted(int(p.name) for p in ckdir.iterdir() if p.name.isdigit()) == [1]
    assert not (Path(sft.workdir) / "export").exists()  # a stopped phase hands nothing on


def test_an_exploding_update_is_never_the_last_good_checkpoint(tiny_configs):
    """lr 1e30 with the explosion guard on (the default): step 1's update moves the weights by ~1e30
    times their norm, so the run stops at step 1 and saves nothing, although every value is finite."""
    sft, _ = tiny_configs
    sft.optim.lr, sft.optim.grad_clip = 1e30, 0.0
    sft.train.steps, sft.train.log_every, sft.train.save_every, sft.train.async_checkpoint = 4, 100, 1, False
    with pytest.raises(FloatingPointError, match=r"exploding update_ratio=.* \(> train.max_update_ratio=1.0\) at step 1: "
                                                 r"stopped without saving\. Last good checkpoint: none yet"):
        pjax.train(sft)
    ckdir = Path(sft.workdir) / "checkpoints"
    assert not ckdir.exists() or not any(p.name.isdigit() for p in ckdir.iterdir())


def test_guards_read_the_update_ratio_and_a_grad_norm_spike():
    ok = {"loss": 1.0, "grad_norm": 1.0, "params_finite": 1.0, "update_ratio": 1e-3}
    steps = [(i, i, dict(ok)) for i in range(1, 13)]
    assert loop.first_nonfinite(steps, max_update_ratio=1.0, grad_spike=50.0) is None
    steps.append((13, 13, {**ok, "grad_norm": 60.0}))  # 60x the median of the 12 steps before
    assert loop.first_nonfinite(steps, 1.0, 0.0) is None  # spike guard off
    unit, step, names = loop.first_nonfinite(steps, 1.0, 50.0)
    assert (unit, step) == (13, 13) and names[0].startswith("grad_norm=60 (> train.grad_spike=50.0")
    assert loop.first_nonfinite(steps[:3], 1.0, 2.0) is None  # a spike needs 10 steps of history
    big = [(1, 1, {**ok, "update_ratio": 2.0})]
    assert loop.first_nonfinite(big, 1.0)[2] == ["update_ratio=2 (> train.max_update_ratio=1.0)"]
    assert loop.first_nonfinite(big, 0.0) is None
