"""Regression guard for the backward pass: (forward + backward) / forward time of the policy's log-probs.

    python -m experiments.backward_ratio --config=configs/sft_tiny.py [--max-ratio=4.6] [--rounds=5]
        [--rows=16 --seq-len=128] [--config.model.d_model=256 ...]

Times, on random tokens `[rows, seq_len]`, the jitted forward `sum(sequence_token_logprobs(params))`
against the jitted `value_and_grad` of the same function (the work of a train step without the
optimizer), alternating the two in each round so that a noisy neighbour slows both alike. The ratio
is a property of the compiled program, not of the machine's speed: torch's is about 3.3 on the issue-17
workload, pjax's was 7.6 before `pjax.models.ops.dense` and about 4.1 after (experiments/RESULTS.md).
Exits with status 1 when the median ratio exceeds `--max-ratio`, so it can gate a change.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import ConfigDict, config_flags

from pjax import models
from pjax.models.config import model_config
from pjax.plan import dashes_to_underscores

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config .py file.", lock_config=True)
flags.DEFINE_float("max_ratio", 4.6, "Fail (exit 1) when the median (fwd+bwd)/fwd ratio exceeds this.")
flags.DEFINE_integer("rounds", 5, "Timed rounds (each: one forward, one forward+backward).")
flags.DEFINE_integer("rows", 16, "Sequences per batch.")
flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
FLAGS = flags.FLAGS


def measure(config: ConfigDict, rows: int, seq_len: int, rounds: int) -> dict:
    cfg = model_config(config)
    md = models.build(cfg)
    params = jax.jit(md.init)(jax.random.key(config.seed))
    rng = np.random.default_rng(config.seed)
    tokens = rng.integers(0, cfg.vocab_size, size=(rows, seq_len)).astype(np.int32)
    mask = np.ones_like(tokens)
    chunk = config.train.logprob_chunk

    def total(p):
        return models.sequence_token_logprobs(md, p, tokens, mask, chunk_size=chunk).sum()

    forward = jax.jit(total)
    both = jax.jit(jax.value_and_grad(total))
    jax.block_until_ready((forward(params), both(params)))  # compile, and one untimed call each
    jax.block_until_ready((forward(params), both(params)))
    fwd, fwd_bwd = [], []
    for _ in range(rounds):
        for fn, times in ((forward, fwd), (both, fwd_bwd)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params))
            times.append(time.perf_counter() - t0)
    ratios = np.array(fwd_bwd) / np.array(fwd)
    return {"forward_s": fwd, "forward_backward_s": fwd_bwd, "ratio_median": float(np.median(ratios)),
            "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max()), "rows": rows, "seq_len": seq_len,
            "model": {"layers": cfg.n_layers, "d_model": cfg.d_model, "d_ff": cfg.d_ff, "vocab": cfg.vocab_size,
                      "remat": cfg.remat, "scan_layers": cfg.scan_layers, "attention": cfg.attention}}


def main(argv) -> None:
    del argv
    result = measure(_CONFIG.value, FLAGS.rows, FLAGS.seq_len, FLAGS.rounds)
    result["max_ratio"] = FLAGS.max_ratio
    result["pass"] = result["ratio_median"] <= FLAGS.max_ratio
    print(json.dumps(result, indent=1))
    if not result["pass"]:
        print(f"FAIL: (fwd+bwd)/fwd = {result['ratio_median']:.2f} > --max-ratio={FLAGS.max_ratio}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, argv=dashes_to_underscores(sys.argv))
