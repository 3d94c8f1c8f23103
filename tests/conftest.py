"""Shared fixtures: tiny configs that run in seconds and write under a temporary directory."""

import atexit
import os
import shutil
import tempfile

# Tiny programs: LLVM's optimisation passes dominate CPU compile time and buy nothing here (the
# numerics are the same), and XLA:CPU's MLIR fusion emitters take about four times as long to compile
# a train step as its elemental emitters (the same operations; float32 rounding may differ in the
# last bit, and every comparison between runs uses the same flags). Set before JAX initialises its
# backend; subprocesses inherit them (some add their own).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                           " --xla_cpu_use_fusion_emitters=false").strip()

# A persistent compilation cache for this session, shared with its subprocesses through the
# environment: every `train.run` jits new functions and every `python -m pjax.train` starts cold, so
# the same tiny programs would otherwise be compiled again and again. A hit is the executable XLA
# built for the identical program (same HLO, flags and devices): the numbers do not change. The
# directory is new for each session (nothing carries over between CI runs) and removed at its end.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _JAX_CACHE = tempfile.mkdtemp(prefix="pjax-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _JAX_CACHE
    atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

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
