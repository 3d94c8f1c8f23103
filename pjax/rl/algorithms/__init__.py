"""Online algorithms, one module each, registered by name (`online.algorithm`). A new one is a module
with an `@register`ed `Algorithm` subclass plus its import line here."""

from pjax.rl.algorithms import grpo, nash_md, pairwise, ppo, raft, rloo  # noqa: F401  (registers them)
from pjax.rl.algorithms.base import REGISTRY, Algorithm, Rollout, get, register, sampler_logps

__all__ = ["REGISTRY", "Algorithm", "Rollout", "get", "register", "sampler_logps"]
