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
    """Per-token arrays for one batch, computed by the train step (objectives never see a model).

    Shapes by data kind: SEQ/UNP `[B, T]`; PAIR and STEP `[B, 2, T]` (index 0 chosen, 1 rejected);
    LIST `[B, K, T]`. Log-probs are float32 `log pi(y_t | x, y_<t)`; `mask` is 1 on scored tokens.
    Sequence log-probs are formed inside each objective, so length normalisation, LD-DPO and token
    weighting stay possible.
    """

    policy_logps: Optional[Array] = None  # None for reward-model objectives
    mask: Optional[Array] = None
    ref_logps: Optional[Array] = None  # same shape; None for reference-free objectives
    labels: Optional[Array] = None  # UNP: [B] 1 = desirable, 0 = undesirable
    scores: Optional[Array] = None  # LIST: [B, K], higher is better
    kl_policy_logps: Optional[Array] = None  # KTO: [B, T] log-probs of mismatched (x_i, y_{i-1}) pairs
    kl_ref_logps: Optional[Array] = None
    kl_mask: Optional[Array] = None
    policy_log_sum_p2: Optional[Array] = None  # WPO: per-token log sum_v p(v)^2, same shape as policy_logps
    state: Optional[dict] = None  # running state of stateful objectives (e.g. BCO's reward shift)
    rewards: Optional[Array] = None  # reward-model objectives: scalar-head outputs, [B, 2] for PAIR
    margins: Optional[Array] = None  # PAIR reward models: [B] per-pair margin m (TRL's `margin` column)
    token_mask: Optional[Array] = None  # same shape: 1 on every real scored token, prompt included (ORPO, as TRL)


# fn(inputs, cfg) -> (loss, metrics); a stateful objective returns (loss, metrics, new_state).
LossFn = Callable[..., tuple]


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    fn: LossFn
    data_shape: str  # "SEQ [B,T]", "PAIR [B,2,T]", "UNP [B,T]", "LIST [B,K,T]", "STEP [B,2,T]"
    needs_reference: bool
    paper: str
    init_state: Optional[Callable[[Any], dict]] = None  # stateful objectives: cfg -> initial state
    trains: str = "policy"  # policy: reads log-probs | reward: reads a scalar head's `rewards`

    @property
    def kind(self) -> str:
        return self.data_shape.split()[0]


REGISTRY: dict[str, Objective] = {}
ALIASES = {"dpo": "sigmoid"}  # TRL's default DPO loss type is called `sigmoid`


def register(name: str, *, data_shape: str, needs_reference: bool, paper: str,
             init_state: Optional[Callable[[Any], dict]] = None, trains: str = "policy"
             ) -> Callable[[LossFn], LossFn]:
    """Add an objective to the registry under `name` (the `config.loss.name` that selects it)."""

    def wrap(fn: LossFn) -> LossFn:
        if name in REGISTRY:
            raise ValueError(f"objective {name!r} registered twice")
        REGISTRY[name] = Objective(name, fn, data_shape, needs_reference, paper, init_state, trains)
        return fn

    return wrap


def get(name: str) -> Objective:
    """The objective for `config.loss.name` (aliases such as `dpo` resolve to their registry name)."""
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        raise ValueError(f"loss.name={name!r} is not a registered objective; known: {sorted(REGISTRY)}")
    return REGISTRY[name]


def markdown_table() -> str:
    rows = ["| name | trains | data shape | needs reference | paper |", "|---|---|---|---|---|"]
    for obj in sorted(REGISTRY.values(), key=lambda o: o.name):
        rows.append(f"| `{obj.name}` | {obj.trains} | {obj.data_shape} | {'yes' if obj.needs_reference else 'no'} "
                    f"| {obj.paper} |")
    return "\n".join(rows)


# Objectives that can join any data shape (they read the chosen row of pairs).
SHAPE_AGNOSTIC = {"sft"}


def terms(cfg) -> list[tuple[Objective, float]]:
    """The (objective, weight) terms of `config.loss`: `names`/`weights` if set, else `name` alone."""
    names = tuple(cfg.get("names", ()) or ()) or (cfg.name,)
    weights = tuple(cfg.get("weights", ()) or ())
    if weights and len(weights) != len(names):
        raise ValueError(f"loss.weights={weights} must have one entry per loss.names={names}")
    weights = weights or (1.0,) * len(names)
    out = [(get(n), float(w)) for n, w in zip(names, weights)]
    kinds = {o.kind for o, _ in out if o.name not in SHAPE_AGNOSTIC}
    if len({o.trains for o, _ in out}) > 1:
        raise ValueError(f"loss.names={names} mixes reward-model and policy objectives")
    if len(kinds) > 1:
        raise ValueError(f"loss.names={names} mixes data shapes {sorted(kinds)}")
    if kinds & {"UNP", "LIST"} and any(o.name in SHAPE_AGNOSTIC for o, _ in out):
        raise ValueError(f"loss.names={names}: `sft` reads the chosen row of pairs; it is not defined for "
                         f"{sorted(kinds)} data (RRHF and PRO carry their own likelihood term)")
    return out


def data_kind(cfg) -> str:
    """The data shape the configured objectives need: SEQ, PAIR, STEP, UNP, LIST or SCORE."""
    kinds = [o.kind for o, _ in terms(cfg) if o.name not in SHAPE_AGNOSTIC]
    return kinds[0] if kinds else "SEQ"


def trains(cfg) -> str:
    """What the configured objectives train: `policy` (log-probs) or `reward` (a scalar head)."""
    return terms(cfg)[0][0].trains


def needs_reference(cfg) -> bool:
    return any(o.needs_reference for o, _ in terms(cfg))


def init_state(cfg) -> dict:
    """Initial running state of every stateful term, keyed by objective name."""
    return {o.name: o.init_state(cfg) for o, _ in terms(cfg) if o.init_state is not None}


def combined(inputs: LossInputs, cfg) -> tuple[Array, Metrics, dict]:
    """sum_k w_k L_k over the configured terms (TRL's `loss_type` list with `loss_weights`).

    Returns the total loss, the metrics (a shared name such as `rewards/chosen` keeps the first term's
    value; with several terms each also appears as `<name>/<metric>`, with `loss/<name>`) and the new
    running state.
    """
    total, metrics, new_state = 0.0, {}, {}
    parts = terms(cfg)
    for obj, weight in parts:
        if obj.init_state is not None:
            loss, m, new_state[obj.name] = obj.fn(inputs.replace(state=inputs.state[obj.name]), cfg)
        else:
            loss, m = obj.fn(inputs, cfg)
        total = total + weight * loss
        metrics.update({k: v for k, v in m.items() if k not in metrics})
        if len(parts) > 1:  # every term's own figures too, since shared names keep the first term's
            metrics[f"loss/{obj.name}"] = loss
            metrics.update({f"{obj.name}/{k}": v for k, v in m.items()})
    return total, metrics, new_state
