"""The objective registry: `config.loss.name` -> a pure loss function.

Every objective has the signature `fn(inputs: LossInputs, cfg: ConfigDict) -> (loss, metrics)`; it
sees per-token log-probs and masks that the train step computed, never a model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
from flax import struct

Array = jax.Array
Metrics = dict[str, Array]


@struct.dataclass
class LossInputs:
    """Per-token arrays for one batch. Paired data is `[B, 2, T]` (index 0 chosen, 1 rejected)."""

    policy_logps: Array  # log pi(y_t | x, y_<t), float32
    mask: Array  # 1 where the token is a scored (completion) token
    ref_logps: Optional[Array] = None  # log pi_ref, same shape; None for reference-free objectives


LossFn = Callable[[LossInputs, Any], tuple[Array, Metrics]]


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    fn: LossFn
    data_shape: str  # "SEQ [B,T]", "PAIR [B,2,T]", ...
    needs_reference: bool
    paper: str


REGISTRY: dict[str, Objective] = {}
ALIASES = {"dpo": "sigmoid"}  # TRL's default DPO loss type is called `sigmoid`


def register(name: str, *, data_shape: str, needs_reference: bool, paper: str) -> Callable[[LossFn], LossFn]:
    def wrap(fn: LossFn) -> LossFn:
        if name in REGISTRY:
            raise ValueError(f"objective {name!r} registered twice")
        REGISTRY[name] = Objective(name, fn, data_shape, needs_reference, paper)
        return fn

    return wrap


def get(name: str) -> Objective:
    """The objective for `config.loss.name` (aliases such as `dpo` resolve to their registry name)."""
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        raise ValueError(f"loss.name={name!r} is not a registered objective; known: {sorted(REGISTRY)}")
    return REGISTRY[name]


def markdown_table() -> str:
    rows = ["| name | data shape | needs reference | paper |", "|---|---|---|---|"]
    for obj in sorted(REGISTRY.values(), key=lambda o: o.name):
        rows.append(f"| `{obj.name}` | {obj.data_shape} | {'yes' if obj.needs_reference else 'no'} | {obj.paper} |")
    return "\n".join(rows)
