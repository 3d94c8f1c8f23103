"""Start-up validation (`pjax.validate`: the phase's checks plus `pjax.core.validate`'s shared ones, and
`pjax.core.setup.validate_for_mesh`): every bad value fails before anything runs, naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest
from jax.sharding import AbstractMesh

import pjax
from pjax import phases, sharding
from pjax.core.setup import make_setup, validate_for_mesh

REPO = Path(__file__).resolve().parents[2]


def test_unknown_config_key_fails_naming_it():
    """The CLI (`python -m pjax.train`): an override of a key the config does not have."""
    proc = subprocess.run([sys.executable, "-m", "pjax.train", "--config=configs/sft_tiny.py",
                           "--config.loss.bogus_key=1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "bogus_key" in proc.stderr


@pytest.mark.parametrize("key,value,match", [
    ("phase", "ppo", "phase='ppo'"),
    ("loss.name", "sft", "loss.name='sft'.*phase='dpo'"),
    ("loss.name", "nope", "loss.name='nope'"),
    ("train.batch_size", 0, "train.batch_size=0"),
    ("loss.beta", -1.0, "loss.beta=-1.0"),
    ("model.n_kv_heads", 3, "model.n_heads=4"),
    ("model.remat", "sometimes", "model.remat='sometimes'"),
    ("train.keep_checkpoints", 0, "train.keep_checkpoints=0"),
    ("optim.lr", 0.0, "optim.lr=0.0"),
    ("optim.lr", float("nan"), "optim.lr=nan must be a finite positive number"),
    ("optim.lr", float("inf"), "optim.lr=inf must be a finite positive number"),
    ("optim.b2", 1.0, r"optim.b2=1.0 must lie in \[0, 1\)"),
    ("optim.weight_decay", -0.1, "optim.weight_decay=-0.1 must be a finite number >= 0"),
    ("optim.eps", float("nan"), "optim.eps=nan"),
    ("train.resume_changes", ("optim.learning_rate",), "train.resume_changes: config key 'optim.learning_rate' does not"),
    ("optim.warmup_steps", -1, "optim.warmup_steps=-1"),
    ("data.max_len", 4096, "data.max_len=4096 exceeds model.max_seq_len=256"),
    ("model.n_kv_heads", 0, "model.n_kv_heads=0"),
    ("model.rope_scaling", (8.0, 4.0, 1.0, 8192.0), "model.rope_scaling"),
    ("train.grad_accum", 0, "train.grad_accum=0"),
    ("train.keep_every", -1, "train.keep_every=-1"),
    ("sharding.preset", "pipeline", "sharding.preset='pipeline'"),
    ("sharding.rules", (("embed", "fsdq"),), "sharding.rules: 'embed' -> 'fsdq' is not a mesh axis"),
    ("workdir", "gs://bucket/run", "workdir='gs://bucket/run': object-store URLs are not supported"),
    ("model.head", "scalar", "model.head='scalar': phase='dpo' needs model.head='lm'"),
    ("loss.name", "bradley_terry", "loss.name='bradley_terry' trains a reward model; phase='dpo'"),
])
def test_bad_values_fail_at_startup_naming_the_key(tiny_configs, key, value, match):
    _, dpo = tiny_configs
    section, _, leaf = key.rpartition(".")
    (dpo[section] if section else dpo)[leaf] = value
    with pytest.raises(ValueError, match=match):
        pjax.validate(dpo)


def _validate_for_mesh(cfg, mesh):
    """The mesh checks a phase runs at start-up (`pjax.Run`, `pjax.train`), on an abstract mesh."""
    validate_for_mesh(cfg, mesh, *phases.spec(cfg).step_rows(cfg))


def test_mesh_mismatches_fail_at_startup(tiny_configs):
    sft, _ = tiny_configs
    sft.train.batch_size = 6
    with pytest.raises(ValueError, match=r"train.batch_size=6 is not divisible by the data-parallel size 4"):
        _validate_for_mesh(sft, AbstractMesh((2, 2, 1), sharding.MESH_AXES))
    sft.train.batch_size, sft.train.grad_accum = 8, 4  # 4 micro-batches of 2 rows cannot split over 4 devices
    with pytest.raises(ValueError, match=r"train.batch_size=8 .* data-parallel size 4 .* train.grad_accum=4"):
        _validate_for_mesh(sft, AbstractMesh((2, 2, 1), sharding.MESH_AXES))
    sft.train.grad_accum = 1
    with pytest.raises(ValueError, match=r"mesh.shape=\(2, 2, 2\) needs 8 devices, but 1 are in use"):
        sharding.make_mesh((2, 2, 2))
    sft.mesh.shape = (2, 2, 2)  # the same through the API, which builds the config's mesh
    with pytest.raises(ValueError, match=r"mesh.shape=\(2, 2, 2\) needs 8 devices, but 1 are in use"):
        pjax.Run(sft)
    sft.mesh.shape = (1, -1, 1)
    # a tensor axis that does not divide the heads is named with the parameter
    with pytest.raises(ValueError, match=r"'layers'\]\['attn'\]\['wk'\].*kv_heads"):
        make_setup(sft, AbstractMesh((1, 1, 4), sharding.MESH_AXES), phases.spec(sft).optimizer_steps(sft))
