"""`python -m pjax.chain`: SFT -> RM -> DPO with lineage, resumed after a SIGKILL, then evaluated
(`pjax.eval`), with the evaluation figures checked against direct computations."""

import json
import signal
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from configs import pipeline_tiny
import pjax
from pjax import chain, checkpoint, models
from tests import procs
from tests.test_eval import _naive_seq_logps

# tiny phases; the reward model runs long enough to be killed between its checkpoints
SMALL = {"train.batch_size": 8, "train.log_every": 1, "train.save_every": 2, "train.progress": False,
         "optim.warmup_steps": 0, "data.num_sft": 256, "data.num_pairs": 256, "data.num_heldout_prompts": 16,
         "data.num_heldout_pairs": 16, "generate.max_new_tokens": 8}
STEPS = {"sft": 4, "rm": 24, "dpo": 4}
EVAL = {"num_prompts": 8, "best_of_n": (1, 2, 4), "best_of_n_prompts": 6}


def overrides(cache: Path) -> dict[str, object]:
    out = {f"{p}.{k}": v for p in STEPS for k, v in {**SMALL, "data.cache_dir": str(cache)}.items()}
    out.update({f"{p}.train.steps": n for p, n in STEPS.items()})
    out.update({f"eval.{k}": v for k, v in EVAL.items()})
    return out


def configured(cache: Path):
    config = pipeline_tiny.get_config()
    for key, value in overrides(cache).items():
        *path, leaf = key.split(".")
        node = config
        for part in path:
            node = node[part]
        node[leaf] = value
    return config


def _flag(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def test_pipeline_resumes_after_a_kill_and_is_evaluated(tmp_path):
    root, cache = tmp_path / "run", tmp_path / "cache"
    cmd = [sys.executable, "-m", "pjax.chain", f"--config={procs.ROOT / 'configs' / 'pipeline_tiny.py'}",
           f"--workdir={root}", "--config.eval.after_each_phase=False",
           *(f"--config.{k}={_flag(v)}" for k, v in overrides(cache).items() if not k.startswith("eval."))]
    log = tmp_path / "first.log"
    proc = procs.spawn(cmd, log)
    deadline = time.monotonic() + 300
    ckpts = root / "rm" / "checkpoints"
    while not (ckpts.exists() and any(p.name.isdigit() and (p / "commit_success.txt").exists() for p in ckpts.iterdir())):
        assert proc.poll() is None, f"the pipeline exited before the kill:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    first = json.loads((root / "pipeline.json").read_text())["phases"]
    assert first["sft"]["status"] == "finished" and first["rm"]["status"] == "running"
    assert first["dpo"]["status"] == "pending" and not (root / "dpo").exists()
    killed_at = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert killed_at < STEPS["rm"]

    # run again: SFT is skipped, the RM resumes from its own checkpoint, DPO starts from the SFT export
    config = configured(cache)
    sft_id = checkpoint.export_metadata(root / "sft" / "export")["export_id"]
    state = chain.run(config, root)
    assert checkpoint.export_metadata(root / "sft" / "export")["export_id"] == sft_id  # not retrained
    assert checkpoint.export_metadata(root / "rm" / "export")["resumed_from"] == f"checkpoint:{killed_at}"
    assert checkpoint.export_metadata(root / "dpo" / "export")["resumed_from"] == f"export:{root / 'sft' / 'export'}"
    assert {n: e["status"] for n, e in state["phases"].items()} == dict.fromkeys(STEPS, "finished")
    for name in ("rm", "dpo"):
        lineage = json.loads((root / name / "lineage.json").read_text())
        assert lineage["parent"] == "sft" and lineage["parent_export_id"] == sft_id
    assert state["phases"]["dpo"]["reward_models"] == [str(root / "rm" / "export")]
    rm_rows = [json.loads(line)["step"] for line in (root / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert rm_rows == list(range(1, STEPS["rm"] + 1))  # each step logged once across the kill

    check_evaluation(root, config)

    # a third run has nothing to do: every phase skipped, the evaluation reused
    before = (root / "dpo" / "eval.json").stat().st_mtime_ns
    exports = {n: checkpoint.export_metadata(root / n / "export")["export_id"] for n in STEPS}
    chain.run(config, root)
    assert {n: checkpoint.export_metadata(root / n / "export")["export_id"] for n in STEPS} == exports  # none retrained
    assert (root / "dpo" / "eval.json").stat().st_mtime_ns == before
    cli = evaluation_cli(root)
    dpo_eval = json.loads((root / "dpo" / "eval.json").read_text())
    assert cli["phases"]["dpo"]["kl_to_reference"] == dpo_eval["kl_to_reference"]
    alone = evaluation_cli(root / "dpo")  # a phase directory on its own: the same figures, against its parent
    assert alone["phases"]["dpo"]["win_rate_rm"] == dpo_eval["win_rate_rm"] and "| 4 | 0.636 |" in \
        (root / "dpo" / "eval" / "eval.md").read_text()
    check_sampled_data(root, config, tmp_path)


def check_evaluation(root: Path, config) -> None:
    """The run's figures (eval/eval.json) against direct computations on the exported models."""
    from pjax.data import batching, load

    run = json.loads((root / "eval" / "eval.json").read_text())
    rm_eval, dpo_eval = run["phases"]["rm"], run["phases"]["dpo"]
    with pjax.on_mesh(config.dpo) as (mesh, rules):
        rm_def, rm_params, rm_meta = checkpoint.load_export(root / "rm" / "export", mesh, rules)
        pol_def, policy, _ = checkpoint.load_export(root / "dpo" / "export", mesh, rules)
        _, reference, _ = checkpoint.load_export(root / "sft" / "export", mesh, rules)
    task = load.load_data(config.dpo).task
    pairs = batching.encode_pairs(task.tokenizer, task.heldout_pairs, config.dpo.data.max_len)

    # reward-model accuracy on the held-out pairs, from the scalar head directly
    r = np.asarray(models.sequence_rewards(rm_def, rm_params, pairs["tokens"], pairs["mask"]))
    assert rm_eval["reward_accuracy"] == pytest.approx(np.mean(r[:, 0] > r[:, 1]))
    assert rm_eval["reward_stats"] == rm_meta["reward_stats"] and rm_meta["reward_stats"]["std"][0] > 0
    # DPO's implicit-reward accuracy from full-vocabulary logits
    rho = (_naive_seq_logps(pol_def, policy, pairs["tokens"], pairs["mask"], pairs["completion_mask"])
           - _naive_seq_logps(pol_def, reference, pairs["tokens"], pairs["mask"], pairs["completion_mask"]))
    assert dpo_eval["implicit_reward_accuracy"] == pytest.approx(np.mean(rho[:, 0] > rho[:, 1]))
    # the sampled figures: the same seeded samples again, scored and compared here
    from pjax import eval as evaluation

    tok = task.tokenizer
    prompts = batching.encode_prompts(tok, task.heldout_prompts[:EVAL["num_prompts"]], config.dpo.data.max_prompt_len)
    kw = dict(max_new_tokens=8, eos_id=tuple(tok.stop_ids), pad_id=tok.pad_id)
    with pjax.on_mesh(config.dpo):
        pol = evaluation.sample(pol_def, policy, prompts, seed=1234, **kw)
        ref = evaluation.sample(pol_def, reference, prompts, seed=1235, **kw)
    diff = (_naive_seq_logps(pol_def, policy, pol["tokens"], pol["mask"], pol["completion_mask"])
            - _naive_seq_logps(pol_def, reference, pol["tokens"], pol["mask"], pol["completion_mask"]))
    np.testing.assert_allclose(dpo_eval["kl_to_reference"], [diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff))],
                               rtol=1e-3, atol=1e-3)
    gold = [np.array([task.gold_reward(tok.decode(c[:n])) for c, n in zip(x["completion"], x["lengths"])])
            for x in (pol, ref)]
    wins = (gold[0] > gold[1]) + 0.5 * (gold[0] == gold[1])
    np.testing.assert_allclose(dpo_eval["win_rate_gold"], [wins.mean(), wins.std(ddof=1) / np.sqrt(len(wins))])
    np.testing.assert_allclose(dpo_eval["gold_reward"], [gold[0].mean(), gold[0].std(ddof=1) / np.sqrt(len(wins))])
    raw = np.asarray(models.sequence_rewards(rm_def, rm_params, pol["tokens"], pol["mask"]), np.float64)
    standardised = (raw - rm_meta["reward_stats"]["mean"][0]) / rm_meta["reward_stats"]["std"][0]
    assert dpo_eval["rm_reward"][0] == pytest.approx(standardised.mean(), rel=1e-4, abs=1e-4)
    assert dpo_eval["num_prompts"] == EVAL["num_prompts"]
    assert "reference" not in run["phases"]["sft"] and "kl_to_reference" not in run["phases"]["sft"]
    examples = dpo_eval["examples"]
    assert len(examples) == 3 and all(isinstance(e["policy"], str) for e in examples)

    bon = run["best_of_n"]
    assert bon["policy"] == str(root / "sft" / "export") and bon["samples_per_prompt"] == 4
    for curve in bon["curves"].values():
        assert [p["n"] for p in curve] == [1, 2, 4]
        np.testing.assert_allclose([p["kl_bound"] for p in curve], [np.log(n) - (n - 1) / n for n in (1, 2, 4)])
    proxy = [p["mean"] for p in bon["curves"]["rm"]]
    assert proxy == sorted(proxy)  # the best of more samples under the selecting reward never scores lower
    oracle, selected = bon["curves"]["gold_oracle"], bon["curves"]["gold_selected_by_rm"]
    assert all(o["mean"] >= s["mean"] - 1e-9 for o, s in zip(oracle, selected))
    png = (root / "eval" / "best_of_n.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] > 100

    table = (root / "eval" / "eval.md").read_text()
    for row in ("reward-model accuracy, held-out pairs", "win rate vs reference, gold reward", "KL to reference",
                "| 4 | 0.636 |"):
        assert row in table, row
    assert list((root / "eval" / "tb").glob("events.out.tfevents.*"))
    tb_rows = [json.loads(line) for line in (root / "eval" / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("dpo/win_rate_gold") == dpo_eval["win_rate_gold"][0] for row in tb_rows)


def evaluation_cli(root: Path) -> dict:
    """`python -m pjax.eval --run=<dir>` with the pipeline's options: the phases' figures reused."""
    from pjax import eval as evaluation

    return evaluation.main([f"--run={root}", f"--num_prompts={EVAL['num_prompts']}", "--best_of_n=1,2,4",
                            f"--best_of_n_prompts={EVAL['best_of_n_prompts']}"])


def check_sampled_data(root: Path, config, tmp_path: Path) -> None:
    """`python -m pjax.sample_data`: best-vs-worst pairs of the SFT policy's samples under the reward
    model, read back as TRL preference rows; re-tokenised, the reward model prefers the chosen."""
    from pjax import sample_data
    from pjax import eval as evaluation
    from pjax.data import load, sources

    out = tmp_path / "bon_pairs.jsonl"
    stats = sample_data.main([f"--run={root}", f"--out={out}", "--n=4", "--num_prompts=6", "--mode=pairs"])
    records, report = sources.load_records(str(out), "PAIR")
    assert report.total == 0 and len(records) == stats["rows"] == 6 - stats["skipped_equal_reward"] \
        - stats["skipped_identical_text"] > 0
    task = load.load_data(config.sft).task
    assert {r["prompt"] for r in records} <= {p for p, *_ in task.pairs}
    # the same samples again (seeded), scored by the RM's head directly and standardised by hand
    with pjax.on_mesh(config.sft) as (mesh, rules):
        pol_def, policy, _ = checkpoint.load_export(root / "sft" / "export", mesh, rules)
        rm_def, rm_params, meta = checkpoint.load_export(root / "rm" / "export", mesh, rules)
        tok, prompts, texts = sample_data.prompts_of(config.sft, "train", 6)
        samples = evaluation.sample(pol_def, policy, prompts, seed=0, num_samples=4, eos_id=tuple(tok.stop_ids),
                                    pad_id=tok.pad_id, max_new_tokens=config.sft.generate.max_new_tokens)
    raw = np.asarray(models.sequence_rewards(rm_def, rm_params, samples["tokens"], samples["mask"]), np.float64)
    r = ((raw - meta["reward_stats"]["mean"][0]) / meta["reward_stats"]["std"][0]).reshape(6, 4)
    completions = np.array(sample_data.completion_texts(tok, samples)).reshape(6, 4)
    want = [{"prompt": p, "chosen": c[np.argmax(x)], "rejected": c[np.argmin(x)]}
            for p, c, x in zip(texts, completions, r) if x.max() > x.min() and c[np.argmax(x)] != c[np.argmin(x)]]
    assert records == want
    for (p, c), t, m in zip([(p, c) for p, cs in zip(texts, completions) for c in cs], samples["tokens"],
                            samples["mask"]):
        assert p + c == tok.decode(t[m > 0])  # the completion text continues the prompt's
    best = sample_data.build(root, tmp_path / "best.jsonl", mode="best", n=4, num_prompts=6)
    assert best["rows"] == 6 and len((tmp_path / "best.jsonl").read_text().splitlines()) == 6


def test_phase_status_follows_the_parent_export_and_the_config(tmp_path):
    """A phase is finished only with its export at the final step, trained with this config from the
    parent export there now; another parent export or config makes it stale (moved aside, retrained)."""
    from pjax.models import llama

    config = configured(tmp_path / "cache")
    root = tmp_path / "run"
    sft, rm = (chain.phase_config(config, n, root) for n in ("sft", "rm"))
    assert chain.status(rm) == "pending"
    params = {"w": np.zeros(2, np.float32)}
    model = dict(vars(llama.preset("tiny")))
    checkpoint.export_params(root / "sft" / "export", params, {"step": 4, "model": model})
    lineage = {"parent_export_id": checkpoint.export_metadata(root / "sft" / "export")["export_id"],
               "config": chain.config_hash(rm)}
    (root / "rm").mkdir()
    (root / "rm" / "lineage.json").write_text(json.dumps(lineage))
    assert chain.status(rm) == "pending"  # begun: resumable
    checkpoint.export_params(root / "rm" / "export", params, {"step": STEPS["rm"], "model": model})
    assert chain.status(rm) == "finished"
    rm.loss.label_smoothing = 0.1  # another config
    assert chain.status(rm) == "stale"
    rm.loss.label_smoothing = 0.0
    rm.reward.models = ("elsewhere",)  # not part of training
    assert chain.status(rm) == "finished"
    checkpoint.export_params(root / "sft" / "export", params, {"step": 6, "model": model})  # the parent again
    assert chain.status(rm) == "stale"
    moved = chain.move_aside(root / "rm")
    assert not (root / "rm").exists() and (moved / "export" / "pjax.json").exists()
    assert chain.status(rm) == "pending" and chain.status(sft) == "stale"  # sft: an export without lineage


def test_pipeline_config_errors_name_the_key(tmp_path):
    config = configured(tmp_path / "cache")
    config.parents.rm = "dpo"
    with pytest.raises(ValueError, match="parents.rm='dpo'"):
        chain.run(config, tmp_path / "run")
    config = configured(tmp_path / "cache")
    config.reward_models = ("sft",)
    with pytest.raises(ValueError, match="reward_models: 'sft' is a 'sft' phase"):
        chain.run(config, tmp_path / "run")
    config = configured(tmp_path / "cache")
    config.dpo.loss.beta = -1.0
    with pytest.raises(ValueError, match="loss.beta=-1.0"):  # every phase checked before the first starts
        chain.run(config, tmp_path / "run")
    assert not (tmp_path / "run" / "sft").exists()
