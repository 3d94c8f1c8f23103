"""The train-step benchmark: its CLI, its arithmetic and the log-prob head memory comparison.

No `__init__.py` here on purpose: with one, pytest would import this directory as the `experiments`
package and shadow the real one at the repo root.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The tiny preset (pjax/models/llama.py PRESETS["tiny"]), written out independently of the bench.
TINY = dict(vocab=512, d=128, layers=2, heads=4, kv_heads=2, d_ff=352, head_dim=128 // 4)


def documented_flops_per_step(m, pairs, seq_len, with_reference):
    """The module docstring's formula, recomputed by hand."""
    n = m["layers"] * (m["d"] * m["head_dim"] * (2 * m["heads"] + 2 * m["kv_heads"]) + 3 * m["d"] * m["d_ff"])
    n += m["d"] * m["vocab"]  # LM head once (tied); input embedding lookup not counted
    a = m["layers"] * seq_len * m["heads"] * m["head_dim"]
    per_token = 6 * n + 6 * a + ((2 * n + 2 * a) if with_reference else 0)
    tokens = pairs * 2 * seq_len
    return tokens, tokens * per_token


def test_cli_dpo_tiny(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "experiments.bench", "--config=configs/dpo_tiny.py", "--steps=2", "--warmup=1",
           "--prompt-len=8", "--completion-len=8", "--config.train.batch_size=2", "--peak-flops=1e12",
           f"--out={out}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = json.loads(proc.stdout)
    r = json.loads(out.read_text())
    assert r == printed

    assert r["overrides"] == {"train.batch_size": 2}
    assert r["batch_shape"] == [2, 2, 16]
    assert r["model"]["layers"] == TINY["layers"] and r["model"]["vocab"] == TINY["vocab"]
    assert r["reference_forward"] is True
    assert r["compile_s"] > 0 and r["step_s_median"] > 0 and r["step_s_p90"] >= r["step_s_median"] * 0.999
    assert len(r["step_s_all"]) == 2

    tokens, flops = documented_flops_per_step(TINY, pairs=2, seq_len=16, with_reference=True)
    assert r["tokens_per_step"] == tokens
    assert math.isclose(r["tokens_per_s"], tokens / r["step_s_median"], rel_tol=1e-9)
    assert r["flops_per_step"] == flops
    assert math.isclose(r["achieved_tflops"], flops / r["step_s_median"] / 1e12, rel_tol=1e-9)
    assert math.isclose(r["mfu"], flops / r["step_s_median"] / (1e12 * r["device_count"]), rel_tol=1e-9)

    mem = r["memory"]
    assert mem["peak_bytes"] > 0 and mem["process_max_rss_bytes"] > 0
    assert math.isfinite(r["final_loss"])


def test_cli_dpo_shared_prompt_counts_the_prompt_once(tmp_path):
    """With `data.layout=shared_prompt` tokens/s still counts both sequences of a pair, and the FLOPs
    count the tokens the model runs on: each pair's prompt once (the bench's pairs share theirs)."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "experiments.bench", "--config=configs/dpo_tiny.py", "--steps=1", "--warmup=0",
           "--prompt-len=8", "--completion-len=4", "--config.train.batch_size=2",
           "--config.data.layout=shared_prompt", f"--out={out}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    tokens, flops = documented_flops_per_step(TINY, pairs=2, seq_len=12, with_reference=True)
    assert r["layout"] == "shared_prompt" and r["tokens_per_step"] == tokens
    placed = 2 * (8 + 4 + 4)  # per pair: the prompt once, then each completion
    assert r["placed_tokens_per_step"] == placed
    assert r["flops_per_step"] == flops // tokens * placed
    assert r["model_positions_per_step"] == 2 * 18  # a row per pair of 3/2 x 12 positions


@pytest.mark.parametrize("bound, status", [(1000.0, 0), (0.5, 1)])
def test_backward_ratio_guard(bound, status):
    """The guard prints the ratio and exits 1 when it exceeds the bound (a fwd+bwd is never under half
    a forward, so 0.5 must fail)."""
    cmd = [sys.executable, "-m", "experiments.backward_ratio", "--config=configs/sft_tiny.py", "--rounds=2",
           "--rows=2", "--seq-len=16", f"--max-ratio={bound}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == status, proc.stderr[-4000:]
    r = json.loads(proc.stdout)
    ratios = [b / f for f, b in zip(r["forward_s"], r["forward_backward_s"])]
    assert r["ratio_median"] == pytest.approx(sorted(ratios)[0] / 2 + sorted(ratios)[1] / 2)
    assert r["pass"] is (status == 0)


def test_logprob_memory_chunked_below_naive():
    from experiments.bench import logprob_memory

    B, T, D, V, chunk = 2, 256, 64, 32768, 32
    r = logprob_memory(B, T, D, V, chunk)
    full = B * T * V * 4
    assert r["full_logits_f32_bytes"] == full
    assert 0 < r["chunked_temp_bytes"] < r["naive_temp_bytes"]
    assert r["chunked_temp_bytes"] < full
    assert r["naive_temp_bytes"] >= full  # the naive head does hold [B, T, V] float32
    assert r["naive_over_chunked"] == pytest.approx(r["naive_temp_bytes"] / r["chunked_temp_bytes"])


def test_cli_decode_tiny(tmp_path):
    """`--decode`: every row generates the requested tokens; tokens/s = rows x tokens / median time."""
    out = tmp_path / "decode.json"
    cmd = [sys.executable, "-m", "experiments.bench", "--decode", "--config=configs/grpo_tiny.py", "--steps=2",
           "--warmup=0", "--prompt-len=4", "--completion-len=6", "--config.train.batch_size=3", f"--out={out}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["rows"] == 3 and result["new_tokens"] == 6
    assert math.isclose(result["decode_tokens_per_s"], 3 * 6 / result["generate_s_median"], rel_tol=1e-9)
