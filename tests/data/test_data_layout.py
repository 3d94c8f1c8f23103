"""Padding-free batch layouts (`data.layout`): the packed rows hold every sequence exactly, and every
objective of the catalogue sees the numbers of the padded layout."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from pjax import losses, models
from pjax.data import layout, load
from pjax.losses import LossInputs
from pjax.losses.registry import REGISTRY

LAYOUTS = ["packed", "shared_prompt"]
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
HH = SHARED / "hh-rlhf" / "harmless-base-test.jsonl.gz"
LLAMA2 = SHARED / "tokenizers" / "llama2.model"


def random_batch(B: int, K: int | None, T: int, seed: int, vocab: int = 61) -> dict[str, np.ndarray]:
    """Right-padded rows of random lengths; the K sequences of a group share a prompt (one pair
    also has a shorter copy of it, as when a long completion cuts the prompt, and one pair is two
    identical sequences)."""
    rng = np.random.default_rng(seed)
    lead = (B,) if K is None else (B, K)
    tokens, mask, completion = (np.zeros((*lead, T), np.int32) for _ in range(3))
    for b in range(B):
        p = int(rng.integers(1, T // 2))
        prompt = rng.integers(1, vocab, p)
        for k in range(1 if K is None else K):
            at = (b,) if K is None else (b, k)
            pk = p - 1 if (b == 1 and k == 1 and p > 1) else p
            c = int(rng.integers(1, T - pk + 1))
            seq = np.concatenate([prompt[p - pk:], rng.integers(1, vocab, c)])
            if b == 2 and K is not None and k > 0:
                seq, pk = tokens[b, 0, :int(mask[b, 0].sum())], p
            n = len(seq)
            tokens[at][:n], mask[at][:n], completion[at][pk:n] = seq, 1, 1
    return {"tokens": tokens, "mask": mask, "completion_mask": completion}


def np_visible(packed: dict[str, np.ndarray], r: int, j: int) -> np.ndarray:
    """Row indices the packed token (r, j) attends to, by the documented rule: same unit, not later,
    branch 0 or its own."""
    seg, br = packed["packed_segments"][r], packed["packed_branches"][r]
    keys = np.arange(j + 1)
    ok = (seg[keys] == seg[j]) & (seg[j] > 0) & ((br[keys] == 0) | (br[keys] == br[j]))
    return keys[ok]


@pytest.mark.parametrize("lay", LAYOUTS)
@pytest.mark.parametrize("K", [None, 2, 3], ids=["rows", "pairs", "lists"])
def test_packed_rows_hold_every_sequence_exactly(lay, K):
    batch = random_batch(6, K, 14, seed=K or 0)
    L = layout.row_length(lay, 0, 14)
    packed = layout.pack(batch, lay, L)
    T = batch["tokens"].shape[-1]
    flat_tok, flat_mask = batch["tokens"].reshape(-1, T), batch["mask"].reshape(-1, T)
    index = packed["unpack_index"].reshape(-1, T - 1)
    for seq in range(len(flat_tok)):
        n = int(flat_mask[seq].sum())
        if n < 2:
            continue
        where = index[seq, :n - 1]  # packed flat index of tokens 1 .. n-1
        first = packed["packed_sources"].reshape(-1)[where[0]] + (where[0] // L) * L
        where = np.concatenate([[first], where])
        r, j = where // L, where % L
        assert (r == r[0]).all()  # a sequence never spans rows
        np.testing.assert_array_equal(packed["packed_tokens"][r, j], flat_tok[seq, :n])
        np.testing.assert_array_equal(packed["packed_positions"][r, j], np.arange(n))
        for t in range(n):  # token t sees exactly tokens 0..t of its own sequence
            np.testing.assert_array_equal(np_visible(packed, r[0], j[t]), np.sort(j[:t + 1]))
            if t:  # and is predicted by token t - 1
                assert packed["packed_sources"][r[0], j[t]] == j[t - 1]
    np.testing.assert_array_equal(packed["unpack_index"][batch["mask"][..., 1:] == 0], 0)
    counts = layout.token_counts(batch, lay, L)
    assert counts["placed"] <= counts["real"] and counts["model"] == packed["packed_tokens"].size
    if lay == "packed":
        assert counts["placed"] == counts["real"]
    elif K is not None:  # each group's shared prefix is placed once
        assert counts["placed"] < counts["real"]


def test_long_pairs_fall_back_to_separate_sequences_and_rows_can_be_padded():
    tokens = np.random.default_rng(3).integers(1, 61, size=(4, 2, 10)).astype(np.int32)
    tokens[:, 1, :3] = tokens[:, 0, :3]  # full-length pairs sharing a 3-token prompt: 17 tokens a pair
    batch = {"tokens": tokens, "mask": np.ones_like(tokens)}
    packed = layout.pack(batch, "shared_prompt", 10, num_rows=12, row_offset=2)  # L = T: no pair fits
    assert (packed["packed_branches"] == 0).all()
    assert packed["packed_tokens"].shape == (12, 10)
    scored = batch["mask"][..., 1:] > 0
    assert packed["unpack_index"][scored].min() >= 2 * 10  # offset by this host's first global row
    with pytest.raises(ValueError, match="needs .* packed rows, 1 were given"):
        layout.pack(batch, "packed", 10, num_rows=1)
    with pytest.raises(ValueError, match="data.pack_len=5 must be 0"):
        layout.validate("packed", 5, 10)
    with pytest.raises(ValueError, match="data.layout='bucketed'"):
        layout.validate("bucketed", 0, 10)


def _model(**kw):
    cfg = models.LlamaConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=40,
                             max_seq_len=64, **kw)
    md = models.build(cfg)
    return md, md.init(jax.random.key(0)), md.init(jax.random.key(1))


@pytest.mark.parametrize("lay", LAYOUTS)
@pytest.mark.parametrize("variant", [{}, dict(sliding_window=3, attention="xla")], ids=["llama", "window-xla"])
def test_packed_logprobs_equal_padded(lay, variant):
    md, params, _ = _model(**variant)
    batch = random_batch(5, 2, 16, seed=5)
    want = np.asarray(models.sequence_token_logprobs(md, params, batch["tokens"], batch["mask"], chunk_size=8))
    packed = layout.pack(batch, lay, layout.row_length(lay, 0, 16))
    got = np.asarray(jax.jit(lambda p, b: models.packed_token_logprobs(md, p, b, chunk_size=8))(
        params, {k: jnp.asarray(v) for k, v in packed.items()}))
    scored = batch["mask"][..., 1:] > 0
    np.testing.assert_allclose(got[scored], want[scored], atol=2e-6, rtol=0)
    np.testing.assert_array_equal(got[~scored], 0)
    if variant:  # the window is shorter than the sequences: it matters, so the comparison means something
        md_full, _, _ = _model()
        full = np.asarray(models.sequence_token_logprobs(md_full, params, batch["tokens"], batch["mask"]))
        assert np.abs(full[scored] - want[scored]).max() > 1e-3


KINDS = {"PAIR": 2, "STEP": 2, "LIST": 3, "UNP": None, "SEQ": None}


@pytest.fixture(scope="module")
def logprobs_by_layout():
    """For each data kind: a batch, and the policy/reference log-probs (and log sum p^2) under every layout."""
    md, params, ref = _model()

    def logps(p, b, packed):
        if packed:
            return models.packed_token_logprobs(md, p, b, chunk_size=8, with_log_sum_p2=True)
        return models.sequence_token_logprobs(md, p, b["tokens"], b["mask"], chunk_size=8, with_log_sum_p2=True)

    fn = jax.jit(lambda p, r, b, packed: (logps(p, b, packed), logps(r, b, packed)[0]), static_argnums=3)
    out = {}
    for kind, K in KINDS.items():
        batch = random_batch(6, K, 16, seed=11)
        out[kind] = {"batch": batch, "padded": fn(params, ref, batch, False)}
        for lay in LAYOUTS:
            packed = layout.pack(batch, lay, layout.row_length(lay, 0, 16))
            out[kind][lay] = fn(params, ref, {k: jnp.asarray(v) for k, v in packed.items()}, True)
    return out


def _inputs(kind, batch, computed, config):
    (policy, log_sum_p2), ref = computed
    rng = np.random.default_rng(0)
    B = batch["tokens"].shape[0]
    extra = {}
    if kind == "UNP":  # KTO's mismatched rows stay padded in every layout: the batch's own rows, shifted
        extra = dict(labels=jnp.asarray(np.arange(B) % 2), kl_policy_logps=jnp.roll(policy, 1, 0),
                     kl_ref_logps=jnp.roll(ref, 1, 0), kl_mask=jnp.roll(batch["completion_mask"][:, 1:], 1, 0))
    if kind == "LIST":
        extra["scores"] = jnp.asarray(rng.normal(size=batch["tokens"].shape[:2]).astype(np.float32))
    return LossInputs(policy_logps=policy, mask=jnp.asarray(batch["completion_mask"][..., 1:]), ref_logps=ref,
                      policy_log_sum_p2=log_sum_p2, state=losses.init_state(config.loss), **extra)


OPTIONS = {"exo_pair": {"label_smoothing": 1e-3}}  # objectives with no usable default
POLICY_OBJECTIVES = sorted(n for n, o in REGISTRY.items() if o.trains == "policy")


@pytest.mark.parametrize("lay", LAYOUTS)
@pytest.mark.parametrize("name", POLICY_OBJECTIVES)
def test_every_objective_sees_the_numbers_of_the_padded_layout(name, lay, logprobs_by_layout):
    kind = REGISTRY[name].kind
    config = base.get_config()
    config.loss.name = name
    config.loss.update(OPTIONS.get(name, {}))
    data = logprobs_by_layout[kind]
    want_loss, want_metrics, _ = losses.combined(_inputs(kind, data["batch"], data["padded"], config), config.loss)
    got_loss, got_metrics, _ = losses.combined(_inputs(kind, data["batch"], data[lay], config), config.loss)
    assert np.isfinite(float(want_loss))
    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-5, atol=1e-6)
    assert got_metrics.keys() == want_metrics.keys()
    for key in want_metrics:
        np.testing.assert_allclose(np.asarray(got_metrics[key]), np.asarray(want_metrics[key]), rtol=1e-4,
                                   atol=1e-5, err_msg=key)


@pytest.mark.skipif(not (HH.exists() and LLAMA2.exists()),
                    reason=f"the real HH pairs and Llama 2 tokenizer are not at {HH.parents[1]} (../shared/data)")
def test_shared_prompt_saves_tokens_on_real_hh_pairs(tmp_path):
    """HH chosen and rejected share the whole conversation but the last reply: on the real pairs as
    training encodes them (Llama 2 tokenizer, data.max_len=512), batches of 8 pairs in the shared-prompt
    layout run the model on far fewer positions than padded or packed rows."""
    config = base.get_config()
    config.phase, config.loss.name = "dpo", "sigmoid"
    config.data.path, config.data.tokenizer, config.data.max_len = str(HH), str(LLAMA2), 512
    config.data.chat_template = "llama2"
    config.data.cache_dir, config.model.vocab_size, config.data.bad_rows = str(tmp_path), 32000, "skip"
    arrays = load.load_data(config).arrays
    totals = {lay: {"real": 0, "model": 0, "placed": 0} for lay in ("padded", *LAYOUTS)}
    for start in range(0, 256, 8):
        batch = {k: arrays[k][start:start + 8] for k in ("tokens", "mask")}
        for lay, total in totals.items():
            counts = layout.token_counts(batch, lay, layout.row_length(lay, 0, 512))
            for key in total:
                total[key] += counts[key]
    padded, packed, shared = totals["padded"], totals["packed"], totals["shared_prompt"]
    assert padded["real"] == packed["real"] == packed["placed"] == shared["real"]
    assert shared["placed"] < 0.75 * packed["placed"]  # the prompt is most of an HH sequence
    assert shared["model"] < packed["model"] < padded["model"]
