"""Phase checkpoints and params-only exports."""

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pjax import checkpoint


def _tree(seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"a": jax.random.normal(k1, (4, 3)), "b": {"c": jax.random.normal(k2, (5,))}}


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def test_export_round_trip_is_exact(tmp_path):
    params = _tree(0)
    checkpoint.export_params(tmp_path / "export", params, {"phase": "sft", "model": {"d_model": 3}})
    assert checkpoint.export_metadata(tmp_path / "export")["phase"] == "sft"
    loaded = checkpoint.load_params(tmp_path / "export", _abstract(params))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_phase_checkpoints_keep_latest_plus_every_mth_and_restore(tmp_path):
    ckpts = checkpoint.PhaseCheckpoints(tmp_path, keep=2, keep_every=3, async_save=True)
    for step in range(1, 8):
        ckpts.save(step, {"step": jnp.int32(step), "params": _tree(step)}, {"step": step, "seed": 0})
    ckpts.wait()
    assert ckpts.latest_step() == 7
    assert ckpts.all_steps() == [3, 6, 7]  # the latest two (6, 7) plus every third (3, 6)
    state, data = ckpts.restore(7, _abstract({"step": jnp.int32(0), "params": _tree(0)}))
    np.testing.assert_array_equal(np.asarray(state["params"]["a"]), np.asarray(_tree(7)["a"]))
    assert data == {"step": 7, "seed": 0}
    ckpts.close()


def _damage(step_dir: Path) -> None:
    """Overwrite the array data files of a checkpoint (OCDBT `d/` chunks) with garbage."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for p in files:
        p.write_bytes(b"\x00garbage" * max(1, p.stat().st_size // 8))


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    ckpts = checkpoint.PhaseCheckpoints(tmp_path, keep=3, async_save=False)
    for step in (1, 2):
        ckpts.save(step, {"step": jnp.int32(step), "params": _tree(step)}, {"step": step})
    ckpts.close()
    _damage(tmp_path / "checkpoints" / "2")
    abstract = _abstract({"step": jnp.int32(0), "params": _tree(0)})
    ckpts = checkpoint.PhaseCheckpoints(tmp_path, keep=3, async_save=False)
    caplog.set_level(logging.WARNING, logger="pjax")
    state, data, source = checkpoint.resume(ckpts, "", abstract, fresh=None, with_params=None)
    assert source == "checkpoint:1" and data == {"step": 1}
    np.testing.assert_array_equal(np.asarray(state["params"]["a"]), np.asarray(_tree(1)["a"]))
    # the warning is the product here: a user must be told that a checkpoint was moved aside
    assert "corrupt-2, resuming from the previous checkpoint (step 1)" in caplog.text
    assert (tmp_path / "checkpoints" / "corrupt-2").is_dir()  # moved aside, not deleted
    assert ckpts.all_steps() == [1]
    ckpts.save(2, {"step": jnp.int32(2), "params": _tree(2)}, {"step": 2})  # the step can be written again
    ckpts.close()
    # a changed config is not damage: an error naming the difference, nothing moved
    changed = _abstract({"step": jnp.int32(0), "params": {"a": jnp.zeros((4, 5)), "b": {"c": jnp.zeros(5)}}})
    ckpts = checkpoint.PhaseCheckpoints(tmp_path, keep=3, async_save=False)
    with pytest.raises(ValueError, match=r"holds a different train state .*\['a'\]: shape \(4, 3\) saved vs \(4, 5\)"):
        checkpoint.resume(ckpts, "", changed, fresh=None, with_params=None)
    assert ckpts.all_steps() == [1, 2]
    # no checkpoint reads back: an error naming the newest, not a silent fresh start, and nothing moved
    _damage(tmp_path / "checkpoints" / "1")
    _damage(tmp_path / "checkpoints" / "2")
    with pytest.raises(checkpoint.CorruptCheckpoint, match="cannot restore checkpoint .*checkpoints/2"):
        checkpoint.resume(ckpts, "", abstract, fresh=None, with_params=None)
    assert ckpts.all_steps() == [1, 2]


def test_missing_and_corrupt_exports_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no params export at .*nowhere"):
        checkpoint.load_params(tmp_path / "nowhere", _abstract(_tree(0)))
    checkpoint.export_params(tmp_path / "export", _tree(0), {"phase": "sft"})
    (tmp_path / "export" / "pjax.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="corrupt export metadata .*pjax.json"):
        checkpoint.export_metadata(tmp_path / "export")
    with pytest.raises(RuntimeError, match="cannot restore params export"):
        checkpoint.load_params(tmp_path / "export", _abstract({"other": jnp.zeros(2)}))
