"""Shared pieces of the experiments that reproduce the literature in miniature (`experiments/noise.py`,
`experiments/frontier.py`): the parent SFT (and reward-model) exports, and where results are committed."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ml_collections import ConfigDict

log = logging.getLogger("pjax")

RESULTS = Path(__file__).resolve().parent / "results"


def demo_phase(root: Path, name: str) -> str:
    """The export of phase `name` (`sft` or `rm`) of the demo pipeline (`configs/pipeline_tiny.py`) in
    `root` (default `runs/literature`, shared by the experiments), run (or resumed, or skipped when
    finished) first."""
    from configs import pipeline_tiny
    from pjax import chain

    cfg = pipeline_tiny.get_config()
    cfg.phases = ("sft", "rm") if name == "rm" else ("sft",)
    cfg.parents = ConfigDict({"rm": "sft"} if name == "rm" else {})
    cfg.reward_models = ("rm",) if name == "rm" else ()
    cfg.eval.after_each_phase = False
    chain.run(cfg, root)
    return str(root / name / "export")


def tiny_policy_config(base: ConfigDict, sft: str, cache_dir: str = "") -> ConfigDict:
    """A phase config started from the SFT export, quiet, with one log line every 25 steps."""
    base.init_from = sft
    base.train.progress = False
    base.train.log_every = 25
    if cache_dir:
        base.data.cache_dir = cache_dir
    return base


def publish(files: list[Path], name: str) -> Path:
    """Copy result files to `experiments/results/<name>/` (committed with the code)."""
    out = RESULTS / name
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, out / Path(f).name)
    log.info("results: %s", out)
    return out
