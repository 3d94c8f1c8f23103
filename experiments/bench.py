"""Train-step benchmark: compile time, step time, tokens/s, model FLOPs, MFU and peak memory.

    python -m experiments.bench --config=configs/dpo_tiny.py --steps=10 [--warmup=2]
        [--prompt-len=64] [--completion-len=64] [--peak-flops=989e12] [--out=bench.json]
        [--config.model.d_model=256 ...]
    python -m experiments.bench --decode --config=configs/grpo_tiny.py [--prompt-len=16 --completion-len=24]
    python -m experiments.bench --logprob-memory [--lp-batch=4 --lp-len=512 --lp-dim=576
        --lp-vocab=128256 --lp-chunk=128]

The step measured is exactly the phase's `pjax.core.step.TrainStep` (grads of the configured objective, AdamW,
donated state), on RANDOM token batches of the requested shape (not the synthetic task), so any
model/batch shape can be measured. Batch = `config.train.batch_size` rows (SFT, `[B, T]`) or pairs
(DPO, `[B, 2, T]`), T = prompt_len + completion_len, no padding; `completion_mask` is 1 on the
completion positions. Objectives that need a reference (DPO) get a frozen copy of the initial params
and compute the reference forward inside the step, as training does without precomputed `ref_logps`.

Timing: `compile_s` is trace + lower + compile of the step (`jit(...).lower(...).compile()`); then `--warmup`
calls are discarded; then `--steps` calls, each `jax.block_until_ready`, give the median and p90.

FLOP formula (model FLOPs, PaLM appendix B / MaxText style; recomputation is NOT counted):
    N      = matmul parameters = L * (d*hd*(2H + 2K) + 3*d*f) + d*V
             (attention q/k/v/o + SwiGLU gate/up/down of every layer, plus the LM head once; the
             input-embedding lookup, norm scales and rope are excluded; a tied model counts the
             shared [V, d] matrix once, as the head)
    A      = L * T * H * hd   (per-token attention term, T = full sequence length prompt+completion)
    train  = 6*N + 6*A  FLOPs per trained token
             (forward+backward = 3 x forward; forward attention QK^T and PV = 4*T*H*hd per layer for
             full attention, halved for the causal mask -> 2*L*T*H*hd; training -> 6*A)
    ref    = 2*N + 2*A  FLOPs per token for the frozen-reference forward (DPO family only)
    flops_per_step = placed_tokens * (train [+ ref])
    tokens_per_step = every non-pad token of the batch (all B*T, or B*2*T for pairs: both rows);
                      tokens/s counts these
    placed_tokens   = the tokens the model runs on: tokens_per_step, except that `data.layout=shared_prompt`
                      places a pair's shared prompt once (pjax.data.layout); its rows' padding is not counted
The model actually runs on T-1 positions per row (the last token is only a target) and computes
the full masked T x T score matrix; remat (`model.remat`) and the chunked LM head's rematerialised
backward add hardware FLOPs not counted here. MFU = flops_per_step / step_s_median /
(peak_flops_per_device * device_count); without `--peak-flops` only achieved TFLOP/s is reported.

Peak memory: on GPU/TPU `device.memory_stats()['peak_bytes_in_use']` (max over local devices); on
CPU the compiled step's `memory_analysis()` (argument + output + temp - alias bytes, one device)
plus the process max RSS (`resource.getrusage`). The compiled estimate is reported everywhere.

`--logprob-memory` compares, without allocating anything (`jit(...).lower(ShapeDtypeStructs)
.compile().memory_analysis()`), the temp bytes of `jax.grad` (w.r.t. hidden and kernel) of
`sum(token_logprobs(...))` (chunked, `pjax.models.heads`) against `naive_token_logprobs` (which
materialises the `[B, T, V]` float32 logits).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import ConfigDict, config_flags

from pjax import generate, losses
from pjax.data import layout
from pjax.data.shapes import random_batch
from pjax.models.heads import naive_token_logprobs, token_logprobs
from pjax.models.llama import LlamaConfig
from pjax.plan import analysis_dict, dashes_to_underscores
from pjax import api
from pjax.models.config import model_config
from pjax.phases import offline

FLOP_FORMULA = (
    "N = L*(d*hd*(2H+2K) + 3*d*f) + d*V (matmul params: layer weights + LM head once; input embedding "
    "lookup excluded); A = L*T*H*hd (T = prompt+completion); per token: train 6N + 6A (causal attention "
    "= half of full 12A), plus reference forward 2N + 2A for objectives with a reference; "
    "flops_per_step = placed_tokens_per_step * per_token (placed = tokens_per_step, shared prompts once "
    "with data.layout=shared_prompt); remat/recompute not counted"
)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config .py file.", lock_config=True)
flags.DEFINE_integer("steps", 10, "Timed steps (median/p90 over these).")
flags.DEFINE_integer("warmup", 2, "Untimed calls after the first (compiling) call.")
flags.DEFINE_integer("prompt_len", 64, "Prompt tokens per sequence.")
flags.DEFINE_integer("completion_len", 64, "Completion tokens per sequence.")
flags.DEFINE_float("peak_flops", None, "Peak FLOP/s of ONE device (e.g. 989e12 for H100 bf16 dense).")
flags.DEFINE_string("out", None, "Also write the JSON here.")
flags.DEFINE_bool("logprob_memory", False, "Chunked vs naive log-prob head memory comparison instead.")
flags.DEFINE_bool("decode", False, "Sampling throughput (pjax.generate) of the config's model instead: "
                  "train.batch_size rows, --prompt-len, --completion-len new tokens.")
flags.DEFINE_integer("lp_batch", 4, "--logprob-memory: B.")
flags.DEFINE_integer("lp_len", 512, "--logprob-memory: T.")
flags.DEFINE_integer("lp_dim", 576, "--logprob-memory: D (hidden size).")
flags.DEFINE_integer("lp_vocab", 128256, "--logprob-memory: V.")
flags.DEFINE_integer("lp_chunk", 128, "--logprob-memory: chunk size of token_logprobs.")
FLAGS = flags.FLAGS

GIB = 1024 ** 3


# ----------------------------------------------------------------------------------------- FLOPs
def matmul_params(cfg: LlamaConfig) -> int:
    """N: every transformer layer weight matrix plus the LM head (once, tied or not)."""
    d, f, hd = cfg.d_model, cfg.d_ff, cfg.head_dim
    layer = d * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + 3 * d * f
    return cfg.n_layers * layer + d * cfg.vocab_size


def flops_per_token(cfg: LlamaConfig, seq_len: int, with_reference: bool) -> int:
    n = matmul_params(cfg)
    a = cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim
    per = 6 * n + 6 * a
    if with_reference:
        per += 2 * n + 2 * a
    return per


# ------------------------------------------------------------------------------------- benchmark
def run_benchmark(config: ConfigDict, *, steps: int = 10, warmup: int = 2, prompt_len: int = 64,
                  completion_len: int = 64, peak_flops: float | None = None, config_path: str | None = None,
                  overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Benchmark one train step of `config` on random batches; returns the JSON-able result."""
    if steps < 1 or warmup < 0:
        raise ValueError("--steps must be >= 1 and --warmup >= 0")
    run = api.Run(config)
    cfg = model_config(config)
    needs_reference = losses.needs_reference(config.loss)
    host_batch = random_batch(config, prompt_len, completion_len, seed=config.seed)
    T = prompt_len + completion_len
    tokens_per_step = int(host_batch["mask"].sum())
    d = config.data
    positions = layout.token_counts(host_batch, d.layout, layout.row_length(d.layout, d.pack_len, T))

    with run:
        setup = run.setup
        state = run.init()
        ref_params = jax.tree.map(jnp.copy, state["params"]) if needs_reference else None
        batch = offline.put_batch(setup, {k: v[setup.local_rows(len(v))] for k, v in host_batch.items()})
        jax.block_until_ready((state, ref_params, batch))
        t0 = time.perf_counter()
        step_fn = run.train_step.jitted(ref_params, batch).lower(state, ref_params, batch).compile()
        compile_s = time.perf_counter() - t0
        compiled_memory = analysis_dict(step_fn)

        for _ in range(warmup):
            state, metrics = step_fn(state, ref_params, batch)
            jax.block_until_ready((state, metrics))
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, metrics = step_fn(state, ref_params, batch)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - t0)
        final_loss = float(jax.device_get(metrics["loss"]))

    devices = jax.devices()
    step_median = float(np.median(times))
    step_p90 = float(np.percentile(times, 90))
    flops = positions["placed"] * flops_per_token(cfg, T, needs_reference)
    achieved = flops / step_median
    mfu = achieved / (peak_flops * len(devices)) if peak_flops else None

    memory: dict[str, Any] = {"compiled_memory_analysis_bytes": compiled_memory}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    if devices[0].platform == "cpu":
        memory["source"] = "cpu: compiled.memory_analysis() (argument+output+temp-alias) and process max RSS"
        memory["peak_bytes"] = compiled_memory["peak_estimate"] if compiled_memory else None
    else:
        stats = [d.memory_stats() or {} for d in jax.local_devices()]
        peaks = [s.get("peak_bytes_in_use") for s in stats if s.get("peak_bytes_in_use") is not None]
        memory["source"] = "device.memory_stats()['peak_bytes_in_use'] (max over local devices)"
        memory["peak_bytes"] = max(peaks) if peaks else None
    memory["peak_gib"] = None if memory["peak_bytes"] is None else memory["peak_bytes"] / GIB
    memory["process_max_rss_bytes"] = rss

    return {
        "config": config_path,
        "overrides": overrides or {},
        "phase": config.phase,
        "loss": config.loss.name,
        "reference_forward": needs_reference,
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "host_cpu": _cpu_model(),
        "mesh": {k: int(v) for k, v in run.mesh.shape.items()},
        "model": {"layers": cfg.n_layers, "d_model": cfg.d_model, "heads": cfg.n_heads,
                  "kv_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "d_ff": cfg.d_ff,
                  "vocab": cfg.vocab_size, "tie_embeddings": cfg.tie_embeddings, "dtype": cfg.dtype,
                  "param_dtype": cfg.param_dtype, "remat": cfg.remat},
        "batch_shape": list(host_batch["tokens"].shape),
        "prompt_len": prompt_len,
        "completion_len": completion_len,
        "logprob_chunk": config.train.logprob_chunk,
        "params": cfg.num_params,
        "matmul_params": matmul_params(cfg),
        "compile_s": compile_s,
        "warmup": warmup,
        "steps": steps,
        "step_s_median": step_median,
        "step_s_p90": step_p90,
        "step_s_all": times,
        "tokens_per_step": tokens_per_step,
        "layout": d.layout,
        "model_positions_per_step": positions["model"],
        "placed_tokens_per_step": positions["placed"],
        "tokens_per_s": tokens_per_step / step_median,
        "flop_formula": FLOP_FORMULA,
        "flops_per_token": flops_per_token(cfg, T, needs_reference),
        "flops_per_step": flops,
        "achieved_tflops": achieved / 1e12,
        "peak_flops_per_device": peak_flops,
        "mfu": mfu,
        "memory": memory,
        "final_loss": final_loss,
        "jax_version": jax.__version__,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------- log-prob memory
def logprob_memory(batch: int = 4, length: int = 512, dim: int = 576, vocab: int = 128256,
                   chunk: int = 128) -> dict[str, Any]:
    """Compiled temp bytes of grad(sum(log-probs)) w.r.t. (hidden, kernel): chunked vs naive head."""
    hidden = jax.ShapeDtypeStruct((batch, length, dim), jnp.float32)
    kernel = jax.ShapeDtypeStruct((dim, vocab), jnp.float32)
    targets = jax.ShapeDtypeStruct((batch, length), jnp.int32)

    def compiled_for(fn):
        loss = lambda h, k, t: jnp.sum(fn(h, k, t))  # noqa: E731
        return analysis_dict(jax.jit(jax.grad(loss, argnums=(0, 1))).lower(hidden, kernel, targets).compile())

    chunked = compiled_for(lambda h, k, t: token_logprobs(h, k, t, chunk_size=chunk))
    naive = compiled_for(naive_token_logprobs)
    full_logits = batch * length * vocab * 4
    ct, nt = chunked["temp"], naive["temp"]
    return {
        "mode": "logprob_memory",
        "what": "compiled temp bytes of jax.grad(sum(log-probs)) w.r.t. hidden and kernel (float32)",
        "shape": {"B": batch, "T": length, "D": dim, "V": vocab, "chunk": chunk},
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "full_logits_f32_bytes": full_logits,
        "full_logits_f32_gib": full_logits / GIB,
        "chunked_temp_bytes": ct,
        "chunked_temp_gib": ct / GIB,
        "naive_temp_bytes": nt,
        "naive_temp_gib": nt / GIB,
        "naive_over_chunked": nt / ct if ct else None,
        "chunked": chunked,
        "naive": naive,
        "jax_version": jax.__version__,
    }


def decode_benchmark(config: ConfigDict, *, steps: int = 5, warmup: int = 1, prompt_len: int = 64,
                     completion_len: int = 64) -> dict[str, Any]:
    """Time `pjax.generate.generate` (prefill + KV-cache decode in one jitted loop) on random prompts of
    the config's model and mesh: every row generates `completion_len` tokens (no stop token is in the
    vocabulary). Decode tokens/s = rows x new tokens / generation time (prefill included)."""
    run = api.Run(config)
    cfg = model_config(config)
    B = config.train.batch_size
    rng = np.random.default_rng(config.seed)
    prompts = rng.integers(3, cfg.vocab_size, (B, prompt_len)).astype(np.int32)
    with run:
        setup = run.setup
        params = run.init()["params"]
        mask = jnp.ones((B, prompt_len), jnp.int32)

        def run(i):
            out = generate.generate(setup.model_def, params, jnp.asarray(prompts), mask, jax.random.key(i),
                                    max_new_tokens=completion_len, eos_id=cfg.vocab_size, pad_id=0)
            return jax.block_until_ready(out["lengths"])

        t0 = time.perf_counter()
        run(0)
        compile_s = time.perf_counter() - t0
        for i in range(warmup):
            run(1 + i)
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            lengths = run(100 + i)
            times.append(time.perf_counter() - t0)
    assert int(np.min(lengths)) == completion_len
    median = float(np.median(times))
    return {"mode": "decode", "model": dataclasses.asdict(cfg), "rows": B, "prompt_len": prompt_len,
            "new_tokens": completion_len, "compile_and_first_s": compile_s, "generate_s_median": median,
            "decode_tokens_per_s": B * completion_len / median, "device": str(jax.devices()[0].device_kind),
            "device_count": jax.device_count(), "jax_version": jax.__version__}


# -------------------------------------------------------------------------------------------- CLI
def main(argv) -> None:
    del argv
    if FLAGS.logprob_memory:
        result = logprob_memory(FLAGS.lp_batch, FLAGS.lp_len, FLAGS.lp_dim, FLAGS.lp_vocab, FLAGS.lp_chunk)
    elif FLAGS.decode:
        if _CONFIG.value is None:
            raise app.UsageError("--config is required with --decode")
        result = decode_benchmark(_CONFIG.value, steps=FLAGS.steps, warmup=FLAGS.warmup,
                                  prompt_len=FLAGS.prompt_len, completion_len=FLAGS.completion_len)
    else:
        if _CONFIG.value is None:
            raise app.UsageError("--config is required (or pass --logprob-memory)")
        result = run_benchmark(_CONFIG.value, steps=FLAGS.steps, warmup=FLAGS.warmup,
                               prompt_len=FLAGS.prompt_len, completion_len=FLAGS.completion_len,
                               peak_flops=FLAGS.peak_flops, config_path=FLAGS["config"].config_filename,
                               overrides=dict(FLAGS["config"].override_values))
    text = json.dumps(result, indent=2)
    print(text)
    if FLAGS.out:
        Path(FLAGS.out).write_text(text + "\n")


if __name__ == "__main__":
    app.run(main, argv=dashes_to_underscores(sys.argv))
