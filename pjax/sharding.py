"""Device mesh and logical-axis sharding.

Parameters and key activations carry logical axis names (`embed`, `mlp`, `act_batch`, ...). One rules
table maps each logical name to a mesh axis, a tuple of mesh axes, or None (replicated): the
parallelism preset `config.sharding.preset` (tables in `configs/base.py`: dp, fsdp, fsdp_tp,
sequence) with single entries overridden by `config.sharding.rules` (see `config_rules`). Nothing
here knows about particular models.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, Any]]

_RULES: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("pjax_rules", default=None)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fill in the one -1 entry of `shape` so that the product is `num_devices`."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh.shape={shape}: expected {len(MESH_AXES)} entries for axes {MESH_AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh.shape={shape}: entries must be positive, with at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh.shape={shape} does not divide the {num_devices} devices")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh.shape={shape} needs {math.prod(shape)} devices, but {num_devices} are in use")
    return shape


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over ('data', 'fsdp', 'tensor') with Auto axis types (sharding propagated by XLA)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(shape, len(devices))
    grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_dict(rules: Rules) -> dict[str, Any]:
    out = {}
    for entry in rules:
        name, target = entry
        if name in out:
            raise ValueError(f"sharding.rules: logical axis {name!r} appears twice")
        out[name] = tuple(target) if isinstance(target, list) else target
    return out


def target_axes(target: Any) -> tuple[str, ...]:
    """The mesh axes of one rule's target: None, an axis name, or a tuple of them."""
    return () if target is None else (target,) if isinstance(target, str) else tuple(target)


def config_rules(sharding_config: Any) -> tuple[tuple[str, Any], ...]:
    """The rules table of a config's `sharding` section: `presets[preset]`, with the entries named in
    `rules` replaced (or added)."""
    presets = sharding_config.presets
    if sharding_config.preset not in presets:
        raise ValueError(f"sharding.preset={sharding_config.preset!r}: expected one of {sorted(presets)}")
    table = rules_dict(presets[sharding_config.preset])
    try:
        overrides = rules_dict(sharding_config.rules)
    except ValueError as e:
        raise ValueError(f"sharding.rules: {e}") from e
    unknown = sorted(set(overrides) - set(table))
    if unknown:
        raise ValueError(f"sharding.rules: unknown logical axes {unknown}; known: {sorted(table)}")
    for name, target in overrides.items():
        for axis in target_axes(target):
            if axis not in MESH_AXES:
                raise ValueError(f"sharding.rules: {name!r} -> {axis!r} is not a mesh axis {MESH_AXES}")
    return tuple({**table, **overrides}.items())


@contextlib.contextmanager
def use_rules(rules: Rules) -> Iterator[None]:
    """Activate a rules table for `constrain` calls inside model code."""
    token = _RULES.set(rules_dict(rules))
    try:
        yield
    finally:
        _RULES.reset(token)


def logical_to_mesh(axes: Sequence[str | None], rules: dict[str, Any],
                    shape: Sequence[int] | None = None, mesh_shape: dict[str, int] | None = None,
                    name: str = "array") -> PartitionSpec:
    """Map logical axis names to a mesh PartitionSpec.

    Unknown logical names are an error (a typo would otherwise silently replicate). With `shape` and
    `mesh_shape` given, a dimension that the mapped mesh axes do not divide is an error naming `name`.
    """
    spec, used = [], set()
    for i, axis in enumerate(axes):
        if axis is None:
            spec.append(None)
            continue
        if axis not in rules:
            raise ValueError(f"{name}: logical axis {axis!r} has no entry in sharding.rules")
        target = rules[axis]
        targets = tuple(t for t in target_axes(target) if t not in used)  # a mesh axis may shard one dim only
        used.update(targets)
        if shape is not None and mesh_shape is not None and targets:
            size = math.prod(mesh_shape[t] for t in targets)
            if shape[i] % size:
                raise ValueError(
                    f"{name}: dimension {i} ({axis!r}, size {shape[i]}) is not divisible by mesh axes "
                    f"{targets} (size {size}); change mesh.shape or sharding.rules"
                )
        spec.append(None if not targets else targets[0] if len(targets) == 1 else targets)
    return PartitionSpec(*spec)


def tree_shardings(logical_specs: Any, shapes: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree of logical PartitionSpecs and matching ShapeDtypeStructs."""
    rd = rules_dict(rules)
    mesh_shape = dict(mesh.shape)
    flat_specs = jax.tree_util.tree_flatten_with_path(
        logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))[0]
    flat_shapes, treedef = jax.tree.flatten(shapes)
    out = []
    for (path, spec), sds in zip(flat_specs, flat_shapes, strict=True):
        name = jax.tree_util.keystr(path)
        axes = tuple(spec) + (None,) * (len(sds.shape) - len(spec))
        out.append(NamedSharding(mesh, logical_to_mesh(axes, rd, sds.shape, mesh_shape, name)))
    return jax.tree.unflatten(treedef, out)


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
    """Shard the leading (batch) dimension by the `batch` rule; replicate the rest."""
    spec = logical_to_mesh(("batch",) + (None,) * (ndim - 1), rules_dict(rules))
    return NamedSharding(mesh, spec)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside `use_rules` (e.g. plain eager calls)."""
    rules = _RULES.get()
    if rules is None:
        return x
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_mesh(axes, rules)
    # Drop axes that do not divide this activation (e.g. a batch of 1 during generation).
    parts = []
    for dim, part in zip(x.shape, tuple(spec) + (None,) * (x.ndim - len(spec))):
        names = () if part is None else (part,) if isinstance(part, str) else part
        parts.append(part if dim % math.prod(mesh.shape[n] for n in names) == 0 else None)
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*parts))
