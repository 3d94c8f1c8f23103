"""Where a phase's train state comes from (`pjax.core.init`): the parent export must match the model and
be there, a resumed phase keeps the parent it started from, and a reward model takes an SFT export's
backbone under a fresh head (a partial restore)."""

import copy
import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest

import pjax
from pjax import checkpoint
from pjax.core import init


@pytest.fixture(scope="module")
def sft_export(tmp_path_factory) -> Path:
    """The export of one tiny SFT phase (the `tiny_configs` SFT run), shared read-only by the tests
    that only start from it."""
    from configs import sft_tiny
    from tests.conftest import tiny

    tmp = tmp_path_factory.mktemp("sft_export")
    return Path(pjax.train(tiny(sft_tiny.get_config(), tmp / "sft", tmp / "cache"))["export"])


def test_init_from_must_match_the_model(tiny_configs, sft_export):
    _, dpo = tiny_configs
    dpo.init_from = str(sft_export)
    dpo.model.d_ff = 256
    with pytest.raises(ValueError, match="model.d_ff: export 352 vs config 256"):
        pjax.train(dpo)


def test_missing_parent_export_is_named(tiny_configs):
    _, dpo = tiny_configs
    with pytest.raises(FileNotFoundError, match="init_from=.*sft/export"):
        pjax.train(dpo)


def test_resume_refuses_a_changed_parent_export(tiny_configs):
    sft, dpo = tiny_configs
    pjax.train(sft)
    dpo.train.steps = 2
    assert pjax.train(dpo)["source"] == f"export:{dpo.init_from}"
    first_id = json.loads((Path(sft.workdir) / "export" / "pjax.json").read_text())["export_id"]
    assert pjax.train(sft)["source"] == f"checkpoint:{sft.train.steps}"  # a rerun of a finished phase keeps its export
    assert json.loads((Path(sft.workdir) / "export" / "pjax.json").read_text())["export_id"] == first_id
    sft.train.steps = 6
    pjax.train(sft)  # training further writes a new export at the same path
    dpo.train.steps = 4
    with pytest.raises(ValueError, match="differs from the parent export this run started from"):
        pjax.train(dpo)
    dpo.init_from = ""
    with pytest.raises(ValueError, match=r"holds checkpoints of a run with another config; .*init_from: '.*' -> ''"):
        pjax.train(dpo)


def test_reward_model_starts_from_the_sft_backbone_with_a_fresh_head(tiny_configs, sft_export, tmp_path):
    """Partial restore: an RM phase from an SFT export takes its embeddings, layers and final norm and
    a freshly initialised scalar head, then trains from exactly that state."""
    from configs import rm_tiny
    from tests.conftest import tiny

    sft, _ = tiny_configs  # the config of `sft_export`
    rm = tiny(rm_tiny.get_config(), tmp_path / "rm", sft.data.cache_dir)
    rm.init_from = str(sft_export)
    rm.model.reward_heads = 2  # an ensemble of two fresh heads on the SFT backbone
    with pjax.Run(sft) as sft_run:
        exported = checkpoint.load_params(rm.init_from, sft_run.setup.abstract_state["params"])
    with pjax.Run(rm) as run:
        assert init.new_heads(rm.init_from, run.model_def.cfg)
        params = init.backbone_with_fresh_head(run.setup, rm.init_from)
        assert set(params) == {"embed", "layers", "final_norm", "score"} and "score" not in exported
        for key in ("embed", "layers", "final_norm"):
            jax.tree.map(np.testing.assert_array_equal, params[key], exported[key])
        assert params["score"].shape == (rm.model.d_model, 2) and float(np.abs(np.asarray(params["score"])).sum()) > 0
        state = run.from_export(rm.init_from)  # the API's start from the parent: the same partial restore
        jax.tree.map(np.testing.assert_array_equal, state["params"], params)
        # the first step's loss (computed before its update) from this state, and from a fresh one
        batch = next(run.batches(run.data()))
        from_parent = float(run.step(state, batch)[1]["loss"])
        from_fresh = float(run.step(run.init(), batch)[1]["loss"])
    out = pjax.train(rm)
    assert out["source"] == f"export:{rm.init_from}"
    # the phase started from the partial restore: its first loss is that state's, not a fresh model's
    assert out["history"][0]["loss"] == pytest.approx(from_parent, rel=1e-6, abs=1e-7)
    assert abs(from_fresh - from_parent) > 1e-3
    assert all(np.isfinite(r["loss"]) for r in out["history"])
    assert set(out["params"]) == {"embed", "layers", "final_norm", "score"}
    rm.init_from, rm.workdir = str(sft_export.parent), str(tmp_path / "rm2")  # not an export: named
    with pytest.raises(FileNotFoundError, match="no finished export"):
        pjax.train(rm)


def test_an_imported_checkpoint_is_the_start_and_the_reference(tiny_configs, sft_export, tmp_path):
    """`import_from` (a Hugging Face directory, here written from the SFT export) without `init_from`: the
    phase starts from it and, in the CLI as in the API (`pjax.Run.reference`), takes it as the reference."""
    from pjax.models import hf

    sft, dpo = tiny_configs
    with pjax.on_mesh(sft) as (mesh, rules):
        model_def, exported, _ = checkpoint.load_export(sft_export, mesh, rules)
        hf.save_hf(exported, model_def.cfg, tmp_path / "hf")
    dpo.init_from, dpo.import_from, dpo.train.steps = "", str(tmp_path / "hf"), 2
    with pjax.Run(dpo) as run:
        reference = run.reference()
        jax.tree.map(np.testing.assert_array_equal, reference, init.import_params(run.setup, dpo.import_from))
        jax.tree.map(np.testing.assert_array_equal, reference, exported)
        # from the imported params against a fresh reference, the first loss would not be ln 2: the check of
        # the CLI's run below tells the two references apart
        batch = next(run.batches(run.data()))
        state = run.setup.state_around(reference)
        fresh_reference = run.setup.init_params(dpo.seed)
        assert abs(float(run.step(state, batch, ref_params=fresh_reference)[1]["loss"]) - np.log(2.0)) > 1e-3
    out = pjax.train(dpo)
    assert out["source"] == f"import:{dpo.import_from}"
    assert out["history"][0]["loss"] == pytest.approx(np.log(2.0), abs=1e-6)  # policy == reference at step 0


@pytest.mark.parametrize("change, key", [
    (("loss", "name", "ipo"), "loss.name: 'dpo' -> 'ipo'"),
    (("loss", "beta", 0.5), "loss.beta: 0.1 -> 0.5"),
    (("model", "n_layers", 3), "model.n_layers: 2 -> 3"),
    (("optim", "lr", 1e-4), "optim.lr:"),
])
def test_a_resumed_run_with_a_changed_objective_or_model_stops_naming_the_key(tiny_configs, sft_export, change, key):
    """The DPO run's checkpoints were written with one config; resuming them with a changed objective,
    model or optimizer stops at start-up naming the key with its old and new value, and writes nothing;
    a safe change (more steps, another attention kernel) resumes, and `train.resume_changes` allows one."""
    _, dpo = tiny_configs
    dpo.init_from, dpo.train.steps = str(sft_export), 2
    pjax.train(dpo)
    saved = (Path(dpo.workdir) / "config.json").read_text()
    section, name, value = change
    changed = copy.deepcopy(dpo)
    changed.train.steps = 3
    changed[section][name] = value
    with pytest.raises(ValueError, match=re.escape(key)):
        pjax.train(changed)
    assert (Path(dpo.workdir) / "config.json").read_text() == saved  # the record of the run is kept
    if change[:2] == ("optim", "lr"):
        changed.train.resume_changes = ("optim.lr",)
        assert pjax.train(changed)["source"] == "checkpoint:2"


def test_safe_changes_resume(tiny_configs, sft_export):
    _, dpo = tiny_configs
    dpo.init_from, dpo.train.steps = str(sft_export), 2
    pjax.train(dpo)
    dpo.train.steps, dpo.model.attention, dpo.train.log_every = 3, "xla", 1
    assert pjax.train(dpo)["source"] == "checkpoint:2"


def test_a_policy_phase_refuses_a_reward_model_export_as_its_parent(tiny_configs, sft_export, tmp_path):
    from configs import rm_tiny
    from tests.conftest import tiny

    sft, dpo = tiny_configs
    rm = tiny(rm_tiny.get_config(), tmp_path / "rm", sft.data.cache_dir)
    rm.init_from, rm.train.steps = str(sft_export), 1
    rm_export = pjax.train(rm)["export"]
    dpo.init_from = rm_export
    with pytest.raises(ValueError, match=r"is a reward model's export \(model.head='scalar'\): a policy phase \(dpo\)"):
        pjax.train(dpo)
