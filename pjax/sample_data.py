"""`python -m pjax.sample_data --run=<dir> --out=<file.jsonl> [--mode=pairs|best|rso] [--n=8]`: datasets
built by sampling a policy of a pipeline run and ranking the samples with its reward model.

For each prompt (the training prompts, or `--split=heldout`), N completions are sampled from the
policy (default: the run's first policy phase, e.g. SFT) at temperature 1 and scored by the reward
model (default: the run's last rm phase; standardised and aggregated as its `reward.*` settings say):
- `pairs`: best vs worst of the N, a preference dataset (online/iterative DPO's data, RLHF Workflow);
- `best`: the best of the N as an SFT row (RAFT / best-of-N fine-tuning / expert iteration);
- `rso`: RSO's statistical rejection sampling (`pjax.bestofn.statistical_rejection_sample`, k of the N
  accepted with beta), then best vs worst of the accepted.
The rows are TRL-format JSONL that trains with `--config.data.path=<file.jsonl>`. Prompts of
conversational datasets are written as their rendered text.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pjax import bestofn, checkpoint, logs, sharding
from pjax import eval as evaluation
from pjax.data import batching, load
from pjax.rewards import RewardModel

log = logging.getLogger("pjax")


def completion_texts(tokenizer, samples: dict[str, np.ndarray]) -> list[str]:
    """Each sample's completion as text that continues its prompt's text (TRL's `prompt + completion`):
    the decoded whole minus the decoded prompt, so a leading space is kept."""
    out = []
    for tokens, mask, completion in zip(samples["tokens"], samples["mask"], samples["completion_mask"]):
        prompt_ids = tokens[(mask > 0) & (completion == 0)]
        whole = tokenizer.decode(tokens[mask > 0])
        prompt = tokenizer.decode(prompt_ids)
        out.append(whole[len(prompt):] if whole.startswith(prompt) else " " + tokenizer.decode(tokens[completion > 0]))
    return out


def _phase(phases: dict[str, dict], name: str | None, want_rm: bool) -> str:
    if name:
        if name not in phases:
            raise ValueError(f"no phase {name!r} in this run (phases: {sorted(phases)})")
        return name
    names = [n for n, e in phases.items() if (e["phase"] == "rm") == want_rm]
    if not names:
        raise ValueError(f"the run has no {'rm' if want_rm else 'policy'} phase")
    return names[-1] if want_rm else names[0]


def prompts_of(config, split: str, num_prompts: int) -> tuple[Any, dict[str, np.ndarray], list[str]]:
    """(tokenizer, left-padded prompt tokens, prompt texts) of the phase's training or held-out rows."""
    data = load.load_data(config)
    tok = data.tokenizer
    if not config.data.path:
        task = data.task
        texts = list(dict.fromkeys(p for p, *_ in task.pairs)) if split == "train" else list(task.heldout_prompts)
        texts = texts[:num_prompts]
        return tok, batching.encode_prompts(tok, texts, config.data.max_prompt_len), texts
    rows = data.arrays if split == "train" else data.heldout
    if rows is None:
        raise ValueError("--split=heldout: the phase holds no rows out (data.num_heldout=0)")
    rows = {k: np.asarray(v[:num_prompts]) for k, v in rows.items() if k in ("tokens", "mask", "completion_mask")}
    prompts = evaluation.prompts_from_rows(rows, tok.pad_id, config.data.max_prompt_len)
    return tok, prompts, [tok.decode(t[m > 0]) for t, m in zip(prompts["tokens"], prompts["mask"])]


def build(run: str | Path, out: str | Path, *, mode: str = "pairs", n: int = 8, policy: str | None = None,
          reward_phase: str | None = None, split: str = "train", num_prompts: int = 512, seed: int = 0,
          k: int = 4, beta: float = 0.5, max_new_tokens: int = 0) -> dict[str, Any]:
    """Sample, score and write the rows (see the module docstring); returns counts and reward figures."""
    if mode not in bestofn.MODES:
        raise ValueError(f"--mode={mode!r}: expected one of {bestofn.MODES}")
    if split not in ("train", "heldout"):
        raise ValueError(f"--split={split!r}: expected 'train' or 'heldout'")
    phases = evaluation.read_run(Path(run))
    policy, reward_phase = _phase(phases, policy, False), _phase(phases, reward_phase, True)
    config = evaluation.phase_config(phases[policy]["workdir"])
    mesh, rules = sharding.make_mesh(config.mesh.shape), sharding.config_rules(config.sharding)
    with jax.set_mesh(mesh), sharding.use_rules(rules):
        model_def, params, _ = checkpoint.load_export(Path(phases[policy]["workdir"]) / "export", mesh, rules)
        rm = RewardModel.from_config(config, mesh, rules, exports=[str(Path(phases[reward_phase]["workdir"]) / "export")])
        tok, prompts, texts = prompts_of(config, split, num_prompts)
        samples = evaluation.sample(model_def, params, prompts, seed=seed, num_samples=n, eos_id=tuple(tok.stop_ids),
                                    pad_id=tok.pad_id, max_new_tokens=max_new_tokens or config.generate.max_new_tokens)
        rewards = rm(samples["tokens"], samples["mask"]).reshape(len(texts), n)
    completions = completion_texts(tok, samples)
    grouped = [completions[i * n:(i + 1) * n] for i in range(len(texts))]
    stats: dict[str, Any] = {}
    rows = bestofn.rows_from_samples(texts, grouped, rewards, mode, k=k, beta=beta, rng=seed, stats=stats)
    bestofn.write_jsonl(out, rows)
    best, _ = bestofn.best_and_worst(rewards)
    stats.update(out=str(out), policy=policy, reward_model=reward_phase, prompts=len(texts), samples_per_prompt=n,
                 mean_reward=float(rewards.mean()), mean_best_reward=float(rewards[np.arange(len(texts)), best].mean()))
    log.info("sample_data: %s", json.dumps(stats))
    return stats


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a `python -m pjax.chain` run directory")
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--mode", default="pairs", choices=bestofn.MODES)
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--policy", default=None, help="the phase to sample (default: the first policy phase)")
    parser.add_argument("--reward_phase", default=None, help="the rm phase that ranks (default: the last one)")
    parser.add_argument("--split", default="train", choices=("train", "heldout"))
    parser.add_argument("--num_prompts", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=4, help="rso: samples accepted per prompt")
    parser.add_argument("--beta", type=float, default=0.5, help="rso: the KL strength of the target policy")
    parser.add_argument("--max_new_tokens", type=int, default=0, help="0: the policy phase's generate.max_new_tokens")
    args = parser.parse_args(argv)
    logs.configure()
    stats = build(args.run, args.out, mode=args.mode, n=args.n, policy=args.policy, reward_phase=args.reward_phase,
                  split=args.split, num_prompts=args.num_prompts, seed=args.seed, k=args.k, beta=args.beta,
                  max_new_tokens=args.max_new_tokens)
    print(json.dumps(stats, indent=2))
    return stats


if __name__ == "__main__":
    main()
