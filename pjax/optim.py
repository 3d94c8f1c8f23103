"""Optimizer and learning-rate schedule from `config.optim`."""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import PartitionSpec


def schedule(cfg, total_steps: int) -> optax.Schedule:
    warmup = max(int(cfg.warmup_steps), 0)
    decay_steps = max(total_steps - warmup, 1)
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.lr, cfg.lr * cfg.min_lr_ratio, decay_steps)
    elif cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.lr)
    else:
        raise ValueError(f"optim.schedule={cfg.schedule!r}: expected cosine, linear or constant")
    if warmup == 0:
        return after
    # Linear warm-up whose first step already moves: lr * (step + 1) / warmup.
    ramp = lambda step: cfg.lr * (step + 1) / warmup  # noqa: E731
    return optax.join_schedules([ramp, after], [warmup])


def make_optimizer(cfg, total_steps: int, logical_specs: Any) -> optax.GradientTransformation:
    """AdamW with global-norm clipping; no weight decay on norm scales (found by logical axis name)."""
    decay_mask = jax.tree.map(lambda spec: "norm" not in tuple(spec), logical_specs,
                              is_leaf=lambda x: isinstance(x, PartitionSpec))
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)
