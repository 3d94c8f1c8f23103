"""The Python API: configs with overrides, whole phases, a phase's parts, exports, reward models."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import pjax
from pjax import eval as evaluation
from tests.test_eval import _naive_seq_logps

README = Path(__file__).resolve().parent.parent / "README.md"


def notebook_example() -> str:
    text = README.read_text()
    start = text.index("<!-- notebook example: tests/test_api.py runs this block -->")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_the_readme_notebook_example_runs_and_its_step_is_the_cli_step(tmp_path, monkeypatch):
    monkeypatch.setenv("PJAX_CACHE", str(tmp_path / "cache"))
    code = notebook_example()
    assert len(code.strip().splitlines()) <= 12
    code = code.replace('"runs/nb/', f'"{tmp_path}/')
    code = code.replace('train__steps=30)', 'train__steps=30, train__progress=False, data__num_sft=512)')
    code = code.replace('train__steps=5)', 'train__steps=5, train__progress=False, train__log_every=1, '
                                           'data__num_pairs=256)')
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    out, metrics, policy = namespace["out"], namespace["metrics"], namespace["policy"]
    assert out["history"][-1]["step"] == 30 and Path(out["export"], "params").exists()
    # the notebook's loop is the CLI's phase: the same losses, step for step
    cli = pjax.train(namespace["dpo"])
    assert cli["history"][-1]["step"] == 5
    assert float(metrics["loss"]) == pytest.approx(cli["history"][-1]["loss"], rel=1e-6)
    # the loaded policy's log-probs against full-vocabulary logits in NumPy
    rows = policy.tokenizer, ["The film was", "It was"], [" good.", " a bad film."]
    from pjax.data import batching

    enc = batching.encode_sft(rows[0], list(zip(rows[1], rows[2])), policy.max_len)
    want = _naive_seq_logps(policy.model_def, policy.params, enc["tokens"], enc["mask"], enc["completion_mask"])
    np.testing.assert_allclose(policy.logprobs(rows[1], rows[2]), want, rtol=1e-5, atol=1e-4)
    samples = policy.sample(["The film was", "It was"], n=3, max_new_tokens=6, seed=1)
    assert [len(s) for s in samples] == [3, 3] and all(isinstance(t, str) for s in samples for t in s)
    assert samples == policy.sample(["The film was", "It was"], n=3, max_new_tokens=6, seed=1)  # seeded


def test_config_names_paths_and_overrides(tmp_path):
    by_name = pjax.config("dpo_tiny", loss__beta=0.25, train__steps=7)
    by_path = pjax.config(str(Path(pjax.api.CONFIGS) / "dpo_tiny.py"), **{"loss.beta": 0.25}, train__steps=7)
    assert by_name.loss.beta == by_path.loss.beta == 0.25 and by_name.train.steps == 7
    with pytest.raises(KeyError, match="loss.betta"):
        pjax.config("dpo_tiny", loss__betta=0.1)
    with pytest.raises(KeyError, match="nosection"):
        pjax.config("dpo_tiny", nosection__x=1)
    with pytest.raises(ValueError, match="train.steps=0 must be positive"):
        pjax.config("dpo_tiny", train__steps=0)  # validated like the CLI
    with pytest.raises(FileNotFoundError, match="dpo_tiny"):
        pjax.config("no_such_config")


def test_run_restores_its_own_checkpoint_and_reward_models_score(tmp_path, monkeypatch):
    monkeypatch.setenv("PJAX_CACHE", str(tmp_path / "cache"))
    small = dict(train__progress=False, train__save_every=2, train__log_every=1, data__num_sft=256,
                 data__num_pairs=256, optim__warmup_steps=0)
    sft = pjax.config("sft_tiny", workdir=str(tmp_path / "sft"), train__steps=4, **small)
    out = pjax.train(sft)
    with pjax.Run(sft) as run:
        restored = run.restore()
    assert int(restored["step"]) == 4
    for a, b in zip(*(jax_leaves(x) for x in (restored["params"], out["params"]))):
        np.testing.assert_array_equal(a, b)
    rm_cfg = pjax.config("rm_tiny", workdir=str(tmp_path / "rm"), init_from=out["export"], train__steps=2, **small)
    rm_out = pjax.train(rm_cfg)
    scorer = pjax.load_reward_model(rm_out["export"], normalize=False)
    texts = ["a great film", "a dull film"]
    with pjax.on_mesh(rm_cfg) as (mesh, rules):
        model_def, params, _ = evaluation.Exports(mesh, rules)(rm_out["export"])
        from pjax import models
        from pjax.data import batching

        enc = batching.encode_sft(scorer.tokenizer, [("", t) for t in texts], scorer.max_len)
        want = np.asarray(models.sequence_rewards(model_def, params, enc["tokens"], enc["mask"])).reshape(len(texts), -1)[:, 0]
    np.testing.assert_allclose(scorer.score(texts), want, rtol=1e-5)


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]
