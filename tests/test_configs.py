"""Every shipped config validates, and the real-scale one fits an 8-device FSDP mesh (abstractly)."""

import importlib
from pathlib import Path

import jax
import pytest
from jax.sharding import AbstractMesh, AxisType

import pjax
from pjax import phases, sharding
from pjax.core.setup import make_setup, validate_for_mesh

CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.py")
                 if p.stem not in ("__init__", "base"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates(name):
    """A phase config validates; a pipeline config (`phases`) validates with every phase in its run."""
    from pjax import chain

    config = importlib.import_module(f"configs.{name}").get_config()
    if "phases" not in config:
        return pjax.validate(config)
    chain.validate(config)
    for phase in config.phases:
        pjax.validate(chain.phase_config(config, phase, Path("/tmp/run")))


def test_dpo_llama_train_state_builds_abstractly_on_8_devices():
    """`jax.eval_shape` of the jitted init with out_shardings on an abstract (1, 8, 1) mesh: no memory."""
    from configs import dpo_llama

    config = dpo_llama.get_config()
    mesh = AbstractMesh((1, 8, 1), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    spec = phases.spec(config)
    validate_for_mesh(config, mesh, *spec.step_rows(config))
    setup = make_setup(config, mesh, spec.optimizer_steps(config))
    init = jax.jit(lambda rng: setup.state_from_params(setup.model_def.init(rng)),
                   out_shardings=setup.state_shardings)
    with jax.sharding.use_abstract_mesh(mesh):
        state = jax.eval_shape(init, jax.random.key(0))
    n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    # Llama 3 8B: 8,030,261,248 parameters (untied 128256-token embedding and head)
    assert n_params == 8_030_261_248 == setup.model_def.cfg.num_params
    # AdamW keeps two moments per parameter, sharded like the parameter
    adam = state["opt_state"][1][0]
    assert sum(x.size for x in jax.tree.leaves(adam.mu)) == n_params
    assert adam.mu["layers"]["mlp"]["gate"].sharding.spec == state["params"]["layers"]["mlp"]["gate"].sharding.spec
    # every large parameter is split 8 ways over fsdp: per-device bytes stay below 1/8 of the total + norms
    per_device = 0
    for leaf in jax.tree.leaves(state["params"]):
        shard = leaf.sharding.shard_shape(leaf.shape)
        per_device += leaf.dtype.itemsize * int(jax.numpy.prod(jax.numpy.array(shard)))
        if leaf.size > 10_000_000:
            assert "fsdp" in jax.tree.leaves(tuple(leaf.sharding.spec)), leaf.sharding
    assert per_device < 4 * n_params / 8 * 1.001
