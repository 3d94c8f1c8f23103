"""What every phase builds first: the mesh, the rules table, the model, the optimizer and the train
state's shardings. Nothing here knows which phase it serves.

The train state (params, optimizer state, step, RNG, the objectives' running state) is a plain pytree,
created inside jit with `out_shardings`, so no device ever holds the unsharded model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from pjax import losses, models, sharding
from pjax.models.config import model_config
from pjax.optim import make_optimizer, schedule

State = dict[str, Any]


@dataclasses.dataclass
class Setup:
    """Everything derived from the config that a phase's loop, the benchmarks and the tests share."""

    config: ConfigDict
    mesh: jax.sharding.Mesh
    rules: sharding.Rules  # the effective rules table (preset + overrides)
    model_def: models.ModelDef
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    param_shardings: Any
    state_shardings: State
    abstract_state: State  # ShapeDtypeStructs carrying their shardings
    _jitted: dict[str, Callable] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def jit(self, name: str, build: Callable[[], Callable], **jit_kwargs) -> Callable:
        """`jax.jit(build(), **jit_kwargs)`, compiled once per setup under `name` (the caller's promise
        that the name identifies the computation)."""
        if name not in self._jitted:
            self._jitted[name] = jax.jit(build(), **jit_kwargs)
        return self._jitted[name]

    def batch_sharding(self, batch: dict[str, Any]) -> dict[str, NamedSharding]:
        return {k: sharding.batch_sharding(self.mesh, self.rules, np.ndim(v)) for k, v in batch.items()}

    def local_rows(self, global_size: int) -> np.ndarray:
        """The rows of a global batch of `global_size` that this process's devices hold, in order
        (every row with one process). A host reads and sends only these."""
        spec = sharding.batch_sharding(self.mesh, self.rules, 1)
        slices = {(s[0].start or 0, global_size if s[0].stop is None else s[0].stop)
                  for s in spec.addressable_devices_indices_map((global_size,)).values()}
        return np.concatenate([np.arange(a, b) for a, b in sorted(slices)])

    def batch_shards_per_process(self) -> int:
        """How many distinct slices of a batch this process's devices hold (a host's rows must divide by it)."""
        spec = sharding.batch_sharding(self.mesh, self.rules, 1)
        total = len({(idx[0].start, idx[0].stop) for idx in spec.devices_indices_map((1 << 20,)).values()})
        return max(1, total // jax.process_count())

    def put_batch(self, local: dict[str, np.ndarray], global_size: int) -> dict[str, jax.Array]:
        """Assemble the global batch from every process's own rows (`local_rows`)."""
        shardings = self.batch_sharding(local)
        return {k: jax.make_array_from_process_local_data(shardings[k], v, (global_size, *v.shape[1:]))
                for k, v in local.items()}

    def device_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Place a global host batch (each process passes the same one and sends its own rows)."""
        size = len(next(iter(batch.values())))
        rows = self.local_rows(size)
        return self.put_batch({k: v[rows] for k, v in batch.items()}, size)

    def init_state(self, seed: int) -> State:
        """A fresh train state from `seed`, created sharded."""
        init = self.jit("init_state", lambda: lambda rng: self.state_from_params(self.model_def.init(rng)),
                        out_shardings=self.state_shardings)
        return init(jax.random.key(seed))

    def init_params(self, seed: int) -> Any:
        """Fresh params from `seed` (the same as `init_state(seed)["params"]`), created sharded."""
        init = self.jit("init_params", lambda: self.model_def.init, out_shardings=self.param_shardings)
        return init(jax.random.key(seed))

    def state_from_params(self, params: Any) -> State:
        """The train state: params, optimizer state, step, the RNG (raw key data, advanced every step)
        and the objectives' running state."""
        rng = jax.random.key_data(jax.random.fold_in(jax.random.key(self.config.seed), 1))
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params),
                "rng": rng, "loss_state": losses.init_state(self.config.loss)}

    def state_around(self, params: Any) -> State:
        """A fresh optimizer state around loaded params, sharded like the train state."""
        fn = self.jit("state_around", lambda: self.state_from_params, in_shardings=(self.param_shardings,),
                      out_shardings=self.state_shardings)
        return fn(params)

    def map_rows(self, name: str, fn: Callable, arrays: dict[str, np.ndarray], keys: tuple[str, ...],
                 params: Any) -> np.ndarray:
        """`fn(params, *arrays[keys])` over every row in batches of `train.batch_size` (the last one wraps
        around, its extra rows dropped), jitted once per `name`, every result gathered on every host."""
        jitted = self.jit(f"map_rows:{name}", lambda: fn, out_shardings=self.replicated)
        bs, n = self.config.train.batch_size, len(arrays[keys[0]])
        parts = []
        for i in range(0, n, bs):
            idx = np.arange(i, i + bs) % n
            batch = self.device_batch({k: np.asarray(arrays[k][idx]) for k in keys})
            parts.append(np.asarray(jax.device_get(jitted(params, *(batch[k] for k in keys)))))
        return np.concatenate(parts)[:n]


def mesh_and_rules(config: ConfigDict) -> tuple[jax.sharding.Mesh, sharding.Rules]:
    """The device mesh of `mesh.shape` and the rules table of `sharding.*`."""
    return sharding.make_mesh(config.mesh.shape), sharding.config_rules(config.sharding)


def make_setup(config: ConfigDict, mesh: jax.sharding.Mesh, total_steps: int) -> Setup:
    """The setup of `config` on `mesh`; `total_steps` optimizer steps set the learning-rate schedule."""
    cfg = model_config(config)
    model_def = models.build(cfg)
    rules = sharding.config_rules(config.sharding)
    param_shardings = sharding.tree_shardings(model_def.logical_specs, model_def.shapes, mesh, rules)
    tx = make_optimizer(config.optim, total_steps, model_def.logical_specs)
    setup = Setup(config, mesh, rules, model_def, tx, schedule(config.optim, total_steps), param_shardings,
                  None, None)
    abstract = jax.eval_shape(setup.state_from_params, model_def.shapes)
    replicated = NamedSharding(mesh, PartitionSpec())
    # `tree_map_params` runs `tx.init` eagerly on placeholders: keep its scalars off the mesh (which may
    # be compile-only devices, see pjax.plan)
    with jax.set_mesh(None):
        opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract["opt_state"], param_shardings,
                                              transform_non_params=lambda _: replicated)
    setup.state_shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings,
                             "rng": replicated, "loss_state": jax.tree.map(lambda _: replicated, abstract["loss_state"])}
    setup.abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                        abstract, setup.state_shardings)
    return setup


def validate_for_mesh(config: ConfigDict, mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh,
                      step_rows: int, rows_key: str) -> None:
    """Checks that need the mesh: the `step_rows` rows of an optimizer step (named by `rows_key` in the
    error) split over the data axes times `train.grad_accum` micro-batches, the sequence over a
    sequence-parallel axis (parameters are checked when their shardings are built)."""
    rules = sharding.rules_dict(sharding.config_rules(config.sharding))
    axes, seq_axes = sharding.target_axes(rules.get("batch")), sharding.target_axes(rules.get("act_seq"))
    dp, sp = math.prod(mesh.shape[a] for a in axes), math.prod(mesh.shape[a] for a in seq_axes)
    if config.data.max_len % sp:
        raise ValueError(f"data.max_len={config.data.max_len} is not divisible by the sequence-parallel size {sp} "
                         f"(mesh axes {seq_axes} of sharding.preset={config.sharding.preset!r})")
    k = config.train.grad_accum
    if step_rows % (dp * k):
        raise ValueError(f"{rows_key}={step_rows} is not divisible by the data-parallel size {dp} (mesh axes "
                         f"{axes} of mesh.shape={tuple(mesh.shape.values())}) times train.grad_accum={k}")
