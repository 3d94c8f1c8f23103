"""Phase checkpoints and params-only exports."""

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


def test_phase_checkpoints_keep_latest_and_restore(tmp_path):
    ckpts = checkpoint.PhaseCheckpoints(tmp_path, keep=2, async_save=True)
    for step in (1, 2, 3):
        ckpts.save(step, {"step": jnp.int32(step), "params": _tree(step)})
    ckpts.wait()
    assert ckpts.latest_step() == 3
    assert sorted(ckpts.manager.all_steps()) == [2, 3]
    state = ckpts.restore(3, _abstract({"step": jnp.int32(0), "params": _tree(0)}))
    np.testing.assert_array_equal(np.asarray(state["params"]["a"]), np.asarray(_tree(3)["a"]))
    ckpts.close()


def test_missing_and_corrupt_exports_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no params export at .*nowhere"):
        checkpoint.load_params(tmp_path / "nowhere", _abstract(_tree(0)))
    checkpoint.export_params(tmp_path / "export", _tree(0), {"phase": "sft"})
    (tmp_path / "export" / "pjax.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="corrupt export metadata .*pjax.json"):
        checkpoint.export_metadata(tmp_path / "export")
    with pytest.raises(RuntimeError, match="cannot restore params export"):
        checkpoint.load_params(tmp_path / "export", _abstract({"other": jnp.zeros(2)}))
