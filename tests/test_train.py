"""The entry point: start-up validation, SFT -> DPO through the export, resume order, metrics."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pjax import train
from pjax.metrics import read_jsonl

REPO = Path(__file__).resolve().parents[1]


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
    sft.init_from = "/nonexistent/export"  # would fail if it were used instead of the own checkpoint
    out = train.run(sft)
    assert out["source"] == "checkpoint:4"
    assert "resume: own checkpoint" in caplog.text
    assert [row["step"] for row in out["history"]] == [5, 6]


def test_init_from_must_match_the_model(tiny_configs):
    sft, dpo = tiny_configs
    train.run(sft)
    dpo.model.d_ff = 256
    with pytest.raises(ValueError, match="model.d_ff: export 352 vs config 256"):
        train.run(dpo)


def test_missing_parent_export_is_named(tiny_configs):
    _, dpo = tiny_configs
    with pytest.raises(FileNotFoundError, match="init_from=.*sft/export"):
        train.run(dpo)
