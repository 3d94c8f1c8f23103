"""Hugging Face checkpoints: the safetensors reader/writer against the reference `safetensors` package,
config.json translation against published configs, and imported models against transformers' own
forward pass (float32, eager attention) on random tiny Llama, Mistral and Qwen2 models.

Nothing here uses pjax to produce an expected value: logits come from transformers, tensors from the
files transformers wrote, published configs from the model repositories' config.json.
"""

import json
import math
import re
import tracemalloc

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from pjax.models import build, hf, sequence_rewards
from pjax.models import safetensors as st
from pjax.models.llama import LlamaConfig, resolved

PEER = "needs the optional peer packages torch and transformers (pip install torch transformers)"

# ----------------------------------------------------------------------------- safetensors


def test_safetensors_round_trips_with_the_reference_package(tmp_path):
    ref = pytest.importorskip("safetensors.numpy", reason="needs the reference `safetensors` package")
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.normal(size=(3, 5)).astype(np.float32),
        "f16": rng.normal(size=(7,)).astype(np.float16),
        "bf16": rng.normal(size=(2, 3, 4)).astype(ml_dtypes.bfloat16),
        "f64": rng.normal(size=(2,)),
        "i64": rng.integers(-9, 9, size=(4, 1)),
        "i32": rng.integers(-9, 9, size=(3,)).astype(np.int32),
        "u8": rng.integers(0, 255, size=(5,)).astype(np.uint8),
        "bool": np.array([True, False, True]),
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.array(2.5, np.float32),
        "big_endian": np.arange(4, dtype=">f4"),
    }
    ours = tmp_path / "ours.safetensors"
    st.save_file(arrays, ours, {"format": "pt"})
    theirs = ref.load_file(str(ours))
    assert theirs.keys() == arrays.keys()
    for name, a in arrays.items():
        assert theirs[name].dtype == a.dtype.newbyteorder("="), name
        np.testing.assert_array_equal(theirs[name], a, err_msg=name)
    del arrays["scalar"]  # the reference NumPy writer stores 0-d arrays as shape [1]
    ref.save_file({k: v.astype(v.dtype.newbyteorder("=")) for k, v in arrays.items()},
                  str(tmp_path / "theirs.safetensors"), metadata={"k": "v"})
    f = st.SafeTensorsFile(tmp_path / "theirs.safetensors")
    assert f.metadata == {"k": "v"} and sorted(f.keys()) == sorted(arrays)
    for name, a in arrays.items():
        assert f.info(name) == (a.dtype.newbyteorder("="), a.shape), name
        np.testing.assert_array_equal(f.get(name), a, err_msg=name)


def test_safetensors_reads_lazily(tmp_path):
    """Opening a file and reading one tensor copies nothing but that tensor: the 32 MB one is only
    mapped (a view into the file), never read into allocated memory."""
    path = tmp_path / "big.safetensors"
    small = np.arange(10, dtype=np.float32)
    st.write(path, {"big": (np.float32, (8 * 1024 * 1024,)), "small": (np.float32, (10,))},
             lambda n: np.ones(8 * 1024 * 1024, np.float32) if n == "big" else small)
    tracemalloc.start()
    try:
        f = st.SafeTensorsFile(path)
        got = np.array(f.get("small"))
        view = f.get("big")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, small)
    assert peak < 1_000_000, peak
    assert not view.flags.owndata and not view.flags.writeable
    assert view[-1] == 1.0 and view.shape == (8 * 1024 * 1024,)


def test_safetensors_rejects_damaged_files(tmp_path):
    path = tmp_path / "x.safetensors"
    st.save_file({"a": np.ones((4, 4), np.float32), "b": np.ones(3, np.float32)}, path)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-4])
    with pytest.raises(ValueError, match=r"cut\.safetensors: tensor 'b'.*data_offsets"):
        st.SafeTensorsFile(tmp_path / "cut.safetensors")
    (tmp_path / "header.safetensors").write_bytes((10**9).to_bytes(8, "little") + data[8:])
    with pytest.raises(ValueError, match=r"header\.safetensors: header length"):
        st.SafeTensorsFile(tmp_path / "header.safetensors")
    (tmp_path / "json.safetensors").write_bytes((4).to_bytes(8, "little") + b"{{{{")
    with pytest.raises(ValueError, match=r"json\.safetensors: unreadable safetensors header"):
        st.SafeTensorsFile(tmp_path / "json.safetensors")
    with pytest.raises(ValueError, match=r"tensor 'a' is float64"):
        st.write(path, {"a": (np.float32, (2,))}, lambda n: np.zeros(2))

# ----------------------------------------------------------------------------- config.json

# The architecture keys of the published config.json files (Hugging Face model repositories).
PUBLISHED = {
    "llama3_8b": {  # meta-llama/Llama-3.1-8B
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": 4096,
        "intermediate_size": 14336, "max_position_embeddings": 131072, "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": False, "vocab_size": 128256, "attention_bias": False, "mlp_bias": False,
        "pretraining_tp": 1, "torch_dtype": "bfloat16", "bos_token_id": 128000, "eos_token_id": 128001},
    "llama3_1b": {  # meta-llama/Llama-3.2-1B
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": 2048,
        "head_dim": 64, "intermediate_size": 8192, "max_position_embeddings": 131072, "num_attention_heads": 32,
        "num_hidden_layers": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": True, "vocab_size": 128256},
    "llama2_7b": {  # meta-llama/Llama-2-7b-hf
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": 4096,
        "intermediate_size": 11008, "max_position_embeddings": 4096, "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "tie_word_embeddings": False, "vocab_size": 32000, "pretraining_tp": 1},
    "mistral_7b": {  # mistralai/Mistral-7B-v0.1
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_act": "silu", "hidden_size": 4096,
        "intermediate_size": 14336, "max_position_embeddings": 32768, "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "sliding_window": 4096, "tie_word_embeddings": False, "vocab_size": 32000},
    "qwen2_0_5b": {  # Qwen/Qwen2-0.5B
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "hidden_size": 896,
        "intermediate_size": 4864, "max_position_embeddings": 131072, "max_window_layers": 24,
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": True,
        "use_sliding_window": False, "vocab_size": 151936},
    "smollm2_135m": {  # HuggingFaceTB/SmolLM2-135M
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": 576,
        "intermediate_size": 1536, "max_position_embeddings": 8192, "num_attention_heads": 9,
        "num_hidden_layers": 30, "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "rope_theta": 100000,
        "rope_scaling": None, "tie_word_embeddings": True, "vocab_size": 49152},
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_configs_give_the_presets(name):
    assert LlamaConfig(**hf.config_from_hf(PUBLISHED[name])) == LlamaConfig(**resolved(name))


def test_transformers5_rope_parameters_format():
    """transformers >= 5 writes `rope_parameters` (with rope_theta inside) instead of the legacy keys."""
    legacy = PUBLISHED["llama3_1b"]
    new = {k: v for k, v in legacy.items() if k not in ("rope_theta", "rope_scaling")}
    new["rope_parameters"] = {**legacy["rope_scaling"], "rope_theta": 500000.0}
    assert hf.config_from_hf(new) == hf.config_from_hf(legacy)
    plain = {**PUBLISHED["llama2_7b"], "rope_parameters": {"rope_theta": 1234.0, "rope_type": "default"}}
    assert hf.config_from_hf(plain)["rope_theta"] == 1234.0 and hf.config_from_hf(plain)["rope_scaling"] == ()


@pytest.mark.parametrize("cfg", [
    LlamaConfig(**resolved("llama3_8b")), LlamaConfig(**resolved("mistral_7b")),
    LlamaConfig(**resolved("qwen2_0_5b")), LlamaConfig(**{**resolved("qwen2_0_5b"), "sliding_window": 64}),
    LlamaConfig(**{**resolved("smollm2_135m"), "head": "scalar"}),
], ids=["llama3", "mistral", "qwen2", "qwen2-window", "reward-model"])
def test_hf_config_round_trips(cfg):
    written = json.loads(json.dumps(hf.hf_config(cfg, eos_token_id=7)))
    assert written["eos_token_id"] == 7
    assert hf.config_from_hf(written) == {k: getattr(cfg, k) for k in hf.config_from_hf(written)}


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gemma"}, "config.json model_type='gemma'"),
    ({"hidden_act": "gelu"}, "config.json hidden_act='gelu'"),
    ({"mlp_bias": True}, "config.json mlp_bias"),
    ({"attention_bias": True}, "config.json attention_bias"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "config.json rope_scaling.rope_type='yarn'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "config.json rope_scaling.rope_type='linear'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "config.json rope_scaling: llama3 RoPE needs"),
    ({"partial_rotary_factor": 0.5}, "config.json partial_rotary_factor"),
    ({"quantization_config": {"quant_method": "gptq"}}, "config.json quantization_config"),
    ({"architectures": ["LlamaForTokenClassification"]}, "config.json architectures"),
    ({"architectures": ["LlamaForSequenceClassification"], "num_labels": 0}, "config.json id2label/num_labels"),
    ({"architectures": ["LlamaForSequenceClassification"], "id2label": {"0": "a", "1": "b"}},
     "config.json id2label/num_labels: a reward model needs exactly 1 label, not 2"),
    ({"hidden_size": None}, "config.json: missing key 'hidden_size'"),
])
def test_unsupported_configs_name_the_key(change, message):
    config = {k: v for k, v in {**PUBLISHED["llama3_8b"], **change}.items() if v is not None}
    with pytest.raises(ValueError, match=re.escape(message)):
        hf.config_from_hf(config)


def test_qwen2_sliding_window_layers():
    qwen = {**PUBLISHED["qwen2_0_5b"], "num_hidden_layers": 4, "use_sliding_window": True, "sliding_window": 8}
    assert hf.config_from_hf({**qwen, "max_window_layers": 0})["sliding_window"] == 8  # every layer
    assert hf.config_from_hf({**qwen, "max_window_layers": 4})["sliding_window"] == 0  # none
    with pytest.raises(ValueError, match="max_window_layers/layer_types"):  # some layers only
        hf.config_from_hf({**qwen, "max_window_layers": 2})
    assert hf.config_from_hf({**qwen, "layer_types": ["sliding_attention"] * 4})["sliding_window"] == 8
    with pytest.raises(ValueError, match="model_type='llama' cannot express"):
        hf.hf_config(LlamaConfig(**resolved("mistral_7b")), "llama")

# ----------------------------------------------------------------------------- against transformers


def _transformers():
    torch = pytest.importorskip("torch", reason=PEER)
    transformers = pytest.importorskip("transformers", reason=PEER)
    return torch, transformers


def hf_model(path, family, head="CausalLM", seed=0, **kw):
    """A random tiny transformers model (float32, eager attention) saved as safetensors at `path`, with
    norm weights, biases and all matrices moved away from their initial values."""
    torch, transformers = _transformers()
    base = dict(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)
    config = getattr(transformers, f"{family}Config")(**{**base, **kw})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, f"{family}For{head}")(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1]))
    model.save_pretrained(path)
    return model


PADDED = np.array([[0, 0, 0] + [1] * 9, [1] * 10 + [0, 0], [1] * 12])  # left, right, none


def np_positions(mask):
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0)


def hf_logits(model, tokens, mask, positions):
    torch, _ = _transformers()
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(positions)).logits.float().numpy()


def pjax_logits(model_def, params, tokens, mask, positions):
    def f(params, tokens, positions, mask):
        model = model_def.module(params)
        hidden, _ = model(tokens, positions, mask)
        return hidden @ model.head_kernel()

    return np.asarray(jax.jit(f)(params, tokens, positions, mask))


CASES = {
    "llama3-rope-untied": ("Llama", dict(rope_theta=500.0, tie_word_embeddings=False, rope_scaling={
        "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 48})),  # wavelengths 6.3 (< 48/4), 30 (between), 140, 660 (> 48)
    "llama-tied": ("Llama", dict(tie_word_embeddings=True, num_key_value_heads=4)),
    "mistral-window": ("Mistral", dict(sliding_window=4, head_dim=12)),
    "qwen2-biases": ("Qwen2", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2-window": ("Qwen2", dict(use_sliding_window=True, sliding_window=3, max_window_layers=0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, tmp_path):
    family, kw = CASES[case]
    model = hf_model(tmp_path, family, **kw)
    cfg = hf.load_config(tmp_path)
    assert cfg.attn_bias == (family == "Qwen2") and cfg.tie_embeddings == kw.get("tie_word_embeddings", False)
    model_def = build(cfg)
    params = hf.load_params(tmp_path, model_def)
    tokens = np.random.default_rng(1).integers(0, 61, size=PADDED.shape)
    positions = np_positions(PADDED) * (3 if "rope" in case else 1)  # reach the scaled RoPE wavelengths
    want = hf_logits(model, tokens, PADDED, positions)
    got = pjax_logits(model_def, params, tokens, PADDED, positions)
    real = PADDED > 0
    assert np.abs(want[real]).max() > 0.1
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)
    if cfg.sliding_window:  # the window matters at these lengths: the comparison is not vacuous
        full = pjax_logits(build(LlamaConfig(**{**cfg.__dict__, "sliding_window": 0})), params, tokens, PADDED,
                           positions)
        assert np.abs(full[real] - want[real]).max() > 1e-2


@pytest.mark.parametrize("labels", [1, 3])
def test_reward_model_matches_transformers(tmp_path, labels):
    """LlamaForSequenceClassification <-> a scalar head read at the last real token (several labels: an
    ensemble of reward heads)."""
    marker = {"pjax_reward_heads": labels} if labels > 1 else {}  # what pjax-to-hf writes for an ensemble
    model = hf_model(tmp_path, "Llama", head="SequenceClassification", num_labels=labels, pad_token_id=0, **marker)
    cfg = hf.load_config(tmp_path)
    assert cfg.head == "scalar" and cfg.reward_heads == labels
    model_def = build(cfg)
    params = hf.load_params(tmp_path, model_def)
    assert params["score"].shape == ((32,) if labels == 1 else (32, labels))
    tokens = np.random.default_rng(2).integers(1, 61, size=PADDED.shape) * PADDED  # pad id 0 at padding
    torch, _ = _transformers()
    with torch.no_grad():
        want = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(PADDED),
                     position_ids=torch.tensor(np_positions(PADDED))).logits.numpy()
    want = want[:, 0] if labels == 1 else want
    got = jax.jit(lambda p, t, m: sequence_rewards(model_def, p, t, m))(params, tokens, PADDED)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
    out = hf.save_hf(params, cfg, tmp_path / "export", extra_config={"pad_token_id": 0})
    _, transformers = _transformers()
    back = transformers.AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32,
                                                                           attn_implementation="eager")
    with torch.no_grad():
        again = back(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(PADDED),
                     position_ids=torch.tensor(np_positions(PADDED))).logits.numpy()
    np.testing.assert_array_equal(again[:, 0] if labels == 1 else again, want)


def _all_tensors(directory):
    ref = pytest.importorskip("safetensors.numpy", reason="needs the reference `safetensors` package")
    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        out.update(ref.load_file(str(path)))
    return out


@pytest.mark.parametrize("case", ["llama3-rope-untied", "mistral-window", "qwen2-window"])
def test_round_trip_is_exact_and_transformers_loads_the_export(case, tmp_path):
    family, kw = CASES[case]
    model = hf_model(tmp_path / "hf", family, **kw)
    model_def = build(hf.load_config(tmp_path / "hf"))
    params = hf.load_params(tmp_path / "hf", model_def)
    out = hf.save_hf(params, model_def.cfg, tmp_path / "export", max_shard_bytes=20_000,
                     extra_config={"bos_token_id": 1, "eos_token_id": 2})
    assert json.loads((out / "config.json").read_text())["architectures"] == [f"{family}ForCausalLM"]
    index = json.loads((out / hf.INDEX_FILE).read_text())
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) >= 3 and sorted(set(index["weight_map"].values())) == files
    assert all(p.stat().st_size <= 20_000 + 2_000 for p in out.glob("*.safetensors"))  # + the header
    original, exported = _all_tensors(tmp_path / "hf"), _all_tensors(out)
    assert original.keys() == exported.keys() == index["weight_map"].keys()
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in exported.values())
    for name in original:
        assert exported[name].dtype == original[name].dtype, name
        np.testing.assert_array_equal(exported[name], original[name], err_msg=name)
    assert json.loads((out / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2}
    jax.tree.map(np.testing.assert_array_equal, hf.load_params(out, model_def), params)  # from the index

    torch, transformers = _transformers()
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
    assert getattr(back.config, "sliding_window", None) == getattr(model.config, "sliding_window", None)
    tokens = np.random.default_rng(3).integers(0, 61, size=PADDED.shape)
    positions = np_positions(PADDED) * 3
    np.testing.assert_array_equal(hf_logits(back, tokens, PADDED, positions),
                                  hf_logits(model, tokens, PADDED, positions))


def test_bfloat16_round_trip_is_bitwise(tmp_path):
    torch, _ = _transformers()
    model = hf_model(tmp_path / "f32", "Qwen2", tie_word_embeddings=False)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    cfg = hf.load_config(tmp_path / "hf", param_dtype="bfloat16")
    params = hf.load_params(tmp_path / "hf", build(cfg))
    assert params["layers"]["attn"]["bq"].dtype == jnp.bfloat16
    out = hf.save_hf(params, cfg, tmp_path / "export", dtype="bfloat16")
    original, exported = _all_tensors(tmp_path / "hf"), _all_tensors(out)
    assert original.keys() == exported.keys()
    for name in original:
        assert original[name].dtype == exported[name].dtype == ml_dtypes.bfloat16, name
        np.testing.assert_array_equal(exported[name].view(np.uint16), original[name].view(np.uint16), err_msg=name)

# ----------------------------------------------------------------------------- memory, errors


def _random_checkpoint(path, cfg, seed=0):
    """A checkpoint written by `save_hf` from random params (no torch needed)."""
    model_def = build(cfg)
    params = jax.jit(model_def.init)(jax.random.key(seed))
    hf.save_hf(params, cfg, path)
    return model_def, params


def test_load_and_save_hold_no_second_copy_on_the_host(tmp_path):
    """Host memory (tracemalloc: NumPy and Python allocations) while loading and saving a 23 MB model
    stays far below one extra copy of it: shards are filled from memory-mapped slices and tensors are
    gathered one layer at a time. (On the CPU backend a device buffer may alias the NumPy array it was
    made from; those stay allocated after the load and belong to the model itself, so the transient
    part is measured against them.)"""
    cfg = LlamaConfig(vocab_size=2048, d_model=256, n_layers=8, n_heads=8, n_kv_heads=4, d_ff=512, max_seq_len=64)
    model_def, params = _random_checkpoint(tmp_path / "hf", cfg)
    model_bytes = sum(a.nbytes for a in jax.tree.leaves(params))
    largest = max(a.nbytes for a in jax.tree.leaves(params))
    assert model_bytes > 20e6 and largest < model_bytes / 5
    # compile (or read from the session's compilation cache) outside the measurement: only the loading
    # and saving of arrays is measured
    jax.block_until_ready(hf.load_params(tmp_path / "hf", model_def))
    hf.save_hf(params, cfg, tmp_path / "warm-up")
    tracemalloc.start()
    try:
        loaded = jax.block_until_ready(hf.load_params(tmp_path / "hf", model_def))
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        hf.save_hf(loaded, cfg, tmp_path / "again")
        save_peak = tracemalloc.get_traced_memory()[1] - current
    finally:
        tracemalloc.stop()
    print(f"model {model_bytes}, largest {largest}, load: peak {peak} current {current}; save peak {save_peak}")
    assert peak - current <= 2.5 * largest, (peak, current, largest)  # a shard or two in flight at a time
    assert peak < 1.25 * model_bytes, (peak, model_bytes)
    assert save_peak <= 2.5 * largest, (save_peak, largest)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), loaded, params)


def _rewrite(path, change):
    """Rewrite safetensors file `path` with `change(dict of arrays)` applied (copies out of the map first)."""
    arrays = {k: np.array(v) for k, v in st.load_file(path).items()}
    st.save_file(change(arrays), path)


TINY = LlamaConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=40, max_seq_len=64)


def test_bad_checkpoints_name_the_tensor_and_file(tmp_path):
    model_def, _ = _random_checkpoint(tmp_path / "ok", TINY)
    file = tmp_path / "ok" / hf.SINGLE_FILE

    def broken(name, change):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
        (d / hf.SINGLE_FILE).write_bytes(file.read_bytes())
        _rewrite(d / hf.SINGLE_FILE, change)
        return d

    d = broken("missing", lambda a: {k: v for k, v in a.items() if k != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.1\.mlp\.up_proj\.weight' is missing from .*missing"):
        hf.load_params(d, model_def)
    d = broken("shape", lambda a: {**a, "model.layers.0.self_attn.k_proj.weight": np.zeros((8, 32), np.float32)})
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.0\.self_attn\.k_proj\.weight' in .*shape.*"
                                         r"has shape \[8, 32\], expected \[16, 32\]"):
        hf.load_params(d, model_def)
    d = broken("extra", lambda a: {**a, "model.layers.2.mlp.up_proj.weight": np.zeros((40, 32), np.float32)})
    with pytest.raises(ValueError, match=r"unexpected tensor 'model\.layers\.2\.mlp\.up_proj\.weight' in .*extra"):
        hf.load_params(d, model_def)
    d = broken("ints", lambda a: {**a, "model.norm.weight": np.zeros(32, np.int32)})
    with pytest.raises(ValueError, match=r"tensor 'model\.norm\.weight' in .*ints.* has dtype int32"):
        hf.load_params(d, model_def)
    # A sharded checkpoint whose index names a file that is not there.
    d = tmp_path / "sharded"
    d.mkdir()
    (d / hf.INDEX_FILE).write_text(json.dumps({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}},
                                              indent=1))
    with pytest.raises(FileNotFoundError, match=r"names model-00001-of-00002\.safetensors, which is not in"):
        hf.load_params(d, model_def)
    # No safetensors at all.
    (tmp_path / "pickles").mkdir()
    (tmp_path / "pickles" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors .* in .*pickles "
                                                r"\(only \['pytorch_model\.bin'\]"):
        hf.load_params(tmp_path / "pickles", model_def)
    # A model definition that computes something else than config.json says.
    with pytest.raises(ValueError, match=r"config\.json: rope_theta gives model\.rope_theta=10000\.0"):
        hf.load_params(tmp_path / "ok", build(LlamaConfig(**{**TINY.__dict__, "rope_theta": 500.0})))
    (tmp_path / "ok" / "config.json").write_text(json.dumps({**hf.hf_config(TINY), "hidden_act": "relu"}))
    with pytest.raises(ValueError, match=r"ok/config\.json hidden_act='relu'"):
        hf.load_config(tmp_path / "ok")


def test_save_hf_is_all_or_nothing(tmp_path, monkeypatch):
    model_def, params = _random_checkpoint(tmp_path / "first", TINY)
    with pytest.raises(FileExistsError, match="first exists and is not empty"):
        hf.save_hf(params, TINY, tmp_path / "first")
    calls = []

    def failing_write(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(path, *args, **kwargs)

    real_write = st.write
    monkeypatch.setattr(hf.safetensors, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        hf.save_hf(params, TINY, tmp_path / "second", max_shard_bytes=10_000)
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first"]  # no half-written or temporary directory
    monkeypatch.setattr(hf.safetensors, "write", real_write)
    doubled = jax.tree.map(lambda a: 2 * a, params)
    hf.save_hf(doubled, TINY, tmp_path / "first", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first"]
    again = hf.load_params(tmp_path / "first", model_def)
    np.testing.assert_array_equal(np.asarray(again["embed"]), 2 * np.asarray(params["embed"]))
    with pytest.raises(ValueError, match=r"params layers/mlp/up has shape \(2, 32, 41\), expected \(2, 32, 40\)"):
        bad = {**params, "layers": {**params["layers"], "mlp": {**params["layers"]["mlp"],
                                                                "up": jnp.zeros((2, 32, 41))}}}
        hf.save_hf(bad, TINY, tmp_path / "bad")
