"""Evaluation figures against independent computations (the run-level evaluation: tests/test_pipeline.py)."""

import jax
import numpy as np
import pytest

from pjax import eval as evaluation
from pjax import models
from pjax.models.heads import naive_token_logprobs


def test_mean_stderr():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    m, se = evaluation.mean_stderr(x)
    assert m == pytest.approx(3.5)
    assert se == pytest.approx(np.std(x, ddof=1) / 2.0)


def _naive_seq_logps(model_def, params, tokens, mask, completion_mask):
    model = model_def.module(params)
    T = tokens.shape[-1]
    tok, msk = tokens.reshape(-1, T), mask.reshape(-1, T)
    hidden, _ = model(tok[:, :-1], models.positions_from_mask(msk)[:, :-1], msk[:, :-1])
    lp = np.asarray(naive_token_logprobs(hidden, model.head_kernel(), tok[:, 1:]), np.float64)
    return (lp * completion_mask.reshape(-1, T)[:, 1:]).sum(-1).reshape(tokens.shape[:-1])


def test_implicit_reward_accuracy_against_full_logits():
    model_def = models.build(models.preset("tiny", vocab_size=64))
    policy = model_def.init(jax.random.key(0))
    reference = model_def.init(jax.random.key(1))
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 64, (10, 2, 12)).astype(np.int32)
    mask = np.ones_like(tokens)
    completion_mask = np.zeros_like(tokens)
    completion_mask[..., 6:] = 1
    pairs = {"tokens": tokens, "mask": mask, "completion_mask": completion_mask}
    rho = (_naive_seq_logps(model_def, policy, tokens, mask, completion_mask)
           - _naive_seq_logps(model_def, reference, tokens, mask, completion_mask))
    expected = float((rho[:, 0] > rho[:, 1]).mean())
    assert evaluation.implicit_reward_accuracy(model_def, policy, reference, pairs, batch_size=4) == expected
    assert evaluation.implicit_reward_accuracy(model_def, policy, policy, pairs) == 0.5  # ties count half


def test_kl_estimate_against_full_logits():
    """KL(pi || pi_ref) from the policy's own samples: the mean of log pi(y) - log pi_ref(y) over them
    (summed over completion tokens, from full-vocabulary logits) and its standard error."""
    model_def = models.build(models.preset("tiny", vocab_size=64))
    policy, reference = model_def.init(jax.random.key(0)), model_def.init(jax.random.key(1))
    prompts = {"tokens": np.array([[0, 5, 6, 7], [8, 9, 10, 11], [0, 0, 12, 13]], np.int32),
               "mask": np.array([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]], np.int32)}
    samples = evaluation.sample(model_def, policy, prompts, seed=0, max_new_tokens=5, eos_id=1, pad_id=0,
                                num_samples=2, chunk=4)
    assert samples["tokens"].shape == (6, 9)
    np.testing.assert_array_equal(samples["tokens"][::2, :4], prompts["tokens"])  # row p * n + j: prompt p
    diff = (_naive_seq_logps(model_def, policy, samples["tokens"], samples["mask"], samples["completion_mask"])
            - _naive_seq_logps(model_def, reference, samples["tokens"], samples["mask"], samples["completion_mask"]))
    mean, se = evaluation.kl_to_reference(model_def, policy, reference, samples)
    assert mean == pytest.approx(diff.mean(), rel=1e-4, abs=1e-4)
    assert se == pytest.approx(diff.std(ddof=1) / np.sqrt(len(diff)), rel=1e-3, abs=1e-4)


def test_monte_carlo_kl_matches_the_exact_kl():
    """The sampler plus the KL estimate against the exact sequence-level KL, enumerated over every
    completion of at most two tokens (a completion ends at EOS) of a tiny vocabulary, with full logits."""
    model_def = models.build(models.preset("tiny", vocab_size=6))
    policy = jax.tree.map(lambda x: 3.0 * x, model_def.init(jax.random.key(0)))  # sharper distributions
    reference = model_def.init(jax.random.key(1))
    eos, prompt = 1, np.array([[2, 3, 4]], np.int32)
    sequences, completion = [], []
    for t1 in range(6):
        for t2 in ([0] if t1 == eos else range(6)):
            sequences.append([2, 3, 4, t1, t2])
            completion.append([0, 0, 0, 1, int(t1 != eos)])
    tokens, completion = np.array(sequences, np.int32), np.array(completion, np.int32)
    mask = np.ones_like(tokens)
    mask[:, 4] = completion[:, 4]
    lp = _naive_seq_logps(model_def, policy, tokens, mask, completion)
    lr = _naive_seq_logps(model_def, reference, tokens, mask, completion)
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-4)  # every completion enumerated
    exact = float((np.exp(lp) * (lp - lr)).sum())
    samples = evaluation.sample(model_def, policy, {"tokens": prompt, "mask": np.ones_like(prompt)}, seed=3,
                                max_new_tokens=2, eos_id=eos, pad_id=0, num_samples=3000, chunk=1000)
    mean, se = evaluation.kl_to_reference(model_def, policy, reference, samples)
    assert exact > 0.05 and abs(mean - exact) < 4 * se, (mean, se, exact)


def test_prompts_from_rows_and_win_rate():
    tokens = np.array([[[1, 5, 6, 7, 8, 0], [1, 5, 6, 9, 0, 0]], [[1, 4, 3, 2, 0, 0], [1, 4, 3, 3, 3, 0]]])
    mask = (tokens > 0).astype(np.int32)
    completion = np.zeros_like(tokens)
    completion[0, :, 3:], completion[1, :, 2:] = 1, 1
    out = evaluation.prompts_from_rows({"tokens": tokens, "mask": mask, "completion_mask": completion * mask},
                                       pad_id=0, length=3)
    np.testing.assert_array_equal(out["tokens"], [[1, 5, 6], [0, 1, 4]])
    np.testing.assert_array_equal(out["mask"], [[1, 1, 1], [0, 1, 1]])
    mean, _ = evaluation.win_rate(np.array([1.0, 2.0, 3.0, 0.0]), np.array([0.0, 2.0, 4.0, -1.0]))
    assert mean == pytest.approx((1 + 0.5 + 0 + 1) / 4)
