"""pjax: learning from preference feedback at scale, in JAX/Flax.

The Python API (`pjax.api`): `pjax.config(path_or_name, **overrides)`, `pjax.train(cfg)`, `pjax.Run(cfg)`,
`pjax.load_export(dir)`, `pjax.load_reward_model(dirs)`, `pjax.validate(cfg)`, `pjax.on_mesh(cfg)`. Loaded on first use, so
that `import pjax.losses` (say) does not import the whole stack.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Model", "RewardScorer", "Run", "config", "load_export", "load_reward_model", "on_mesh", "train", "validate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("pjax.api"), name)
    raise AttributeError(f"module 'pjax' has no attribute {name!r}")
