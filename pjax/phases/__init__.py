"""The phase table: `config.phase` -> its entry (`pjax.core.loop.PhaseSpec`). Offline phases live here
(`offline.py`: sft | rm | dpo), the online one in `pjax.rl`."""

from __future__ import annotations

from ml_collections import ConfigDict

from pjax.core.loop import PhaseSpec
from pjax.phases import offline
from pjax.rl.loop import SPEC as ONLINE

PHASES: dict[str, PhaseSpec] = {"sft": offline.spec("sft"), "rm": offline.spec("rm"), "dpo": offline.spec("dpo"),
                                "online": ONLINE}


def spec(config: ConfigDict) -> PhaseSpec:
    """The entry of `config.phase`."""
    if config.phase not in PHASES:
        raise ValueError(f"phase={config.phase!r}: expected one of {sorted(PHASES)}")
    return PHASES[config.phase]
