"""Shared fixtures: tiny configs that run in seconds and write under a temporary directory."""

import os

# Tiny programs: LLVM's optimisation passes dominate CPU compile time and buy nothing here (the
# numerics are the same). Set before JAX initialises its backend; subprocess tests set their own.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import pytest  # noqa: E402

from configs import dpo_tiny, sft_tiny  # noqa: E402


def tiny(cfg, workdir, cache_dir, steps=4):
    cfg.workdir = str(workdir)
    cfg.data.cache_dir = str(cache_dir)
    cfg.data.num_sft = 256
    cfg.data.num_pairs = 256
    cfg.data.num_heldout_prompts = 16
    cfg.data.num_heldout_pairs = 16
    cfg.train.steps = steps
    cfg.train.batch_size = 8
    cfg.train.log_every = 1
    cfg.train.save_every = 2
    cfg.train.progress = False
    cfg.optim.warmup_steps = 0  # every step updates (a warm-up step would have lr 0)
    return cfg


@pytest.fixture
def tiny_configs(tmp_path):
    """(sft, dpo) configs chained through the SFT export, in tmp_path."""
    cache = tmp_path / "cache"
    sft = tiny(sft_tiny.get_config(), tmp_path / "sft", cache)
    dpo = tiny(dpo_tiny.get_config(), tmp_path / "dpo", cache)
    dpo.init_from = str(tmp_path / "sft" / "export")
    return sft, dpo
