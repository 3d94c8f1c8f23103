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
    with pytest.raises(checkpoint.CorruptCheckpoint, match=r"checkpoints/2: state/d/.* does not match its checksum"):
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


def _data_files(state_dir: Path) -> list[Path]:
    return [p for p in state_dir.rglob("*") if p.is_file() and p.parent.name == "d"]


def _flip_a_byte(state_dir: Path) -> None:
    path = max(_data_files(state_dir), key=lambda p: p.stat().st_size)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def _garbage_4k(state_dir: Path) -> None:
    path = max(_data_files(state_dir), key=lambda p: p.stat().st_size)
    raw = bytearray(path.read_bytes())
    raw[:4096] = np.random.default_rng(0).integers(0, 256, min(4096, len(raw)), dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))


DAMAGE = {  # ways a step's `state` item is found broken on disk (a crash, a full disk, a bad copy)
    "a flipped byte": _flip_a_byte,  # orbax restores these two without complaint: the checksums catch them
    "4 KB of garbage": _garbage_4k,
    "data truncated": lambda s: [p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]) for p in _data_files(s)],
    "data zero-length": lambda s: [p.write_bytes(b"") for p in _data_files(s)],
    "data deleted": lambda s: [p.unlink() for p in _data_files(s)],
    "_METADATA missing": lambda s: (s / "_METADATA").unlink(),
    "_METADATA garbled": lambda s: (s / "_METADATA").write_text("{not json"),
    "manifests deleted": lambda s: [p.unlink() for p in s.rglob("manifest.ocdbt")],
}


@pytest.fixture(scope="module")
def real_train_state(tmp_path_factory):
    """The tiny SFT config's real train state: params and optax's AdamW state (named tuples)."""
    import pjax

    config = pjax.config("configs/sft_tiny.py", workdir=str(tmp_path_factory.mktemp("real")), init_from="")
    run = pjax.Run(config)
    with run:
        state = run.init()
        abstract = run.setup.abstract_state
    return run, state, abstract


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_step_of_a_real_adamw_state_falls_back(damage, real_train_state, tmp_path, caplog):
    """The newest step damaged on disk: the previous, intact one resumes (no false 'different train
    state' error from the optimizer state's named tuples), the damaged one is moved aside."""
    run, state, abstract = real_train_state
    with run:
        ckpts = checkpoint.PhaseCheckpoints(tmp_path, keep=3, async_save=False)
        for step in (1, 2):
            ckpts.save(step, state, {"step": step})
        ckpts.close()
        DAMAGE[damage](tmp_path / "checkpoints" / "2" / "state")
        ckpts = checkpoint.PhaseCheckpoints(tmp_path, keep=3, async_save=False)
        caplog.set_level(logging.WARNING, logger="pjax")
        restored, data, source = checkpoint.resume(ckpts, "", abstract, fresh=None, with_params=None)
        ckpts.close()
    assert source == "checkpoint:1" and data == {"step": 1}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (tmp_path / "checkpoints" / "corrupt-2").is_dir() and "corrupt-2" in caplog.text


def test_a_changed_model_names_the_parameters_first(real_train_state, tmp_path):
    """A real state of another shape: the error names the parameter that differs before the optimizer
    state's copies of it, and a named-tuple field matches its saved dict key (no false differences)."""
    run, state, abstract = real_train_state
    with run:
        ckpts = checkpoint.PhaseCheckpoints(tmp_path, keep=3, async_save=False)
        ckpts.save(1, state, {"step": 1})
        assert ckpts.structure_mismatch(1, abstract) == ""  # the same state: nothing differs
        wider = jax.tree.map(lambda x: x, abstract)
        emb = wider["params"]["embed"]
        wider["params"]["embed"] = jax.ShapeDtypeStruct((emb.shape[0], emb.shape[1] * 2), emb.dtype)
        mismatch = ckpts.structure_mismatch(1, wider)
        ckpts.close()
    assert mismatch.startswith("['params']['embed']: shape"), mismatch
