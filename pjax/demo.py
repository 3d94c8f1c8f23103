"""`python -m pjax.demo [--workdir=runs/demo]`: the built-in end-to-end job (`make demo`).

SFT then DPO of the tiny Llama on the synthetic task, each phase in its own directory with DPO
initialised from the SFT export (policy and frozen reference), then a before/after table on held-out
prompts: gold reward of sampled completions, win rate, implicit-reward accuracy on held-out pairs,
and the KL to the reference, plus two sample completions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

from configs import dpo_tiny, sft_tiny
from pjax import checkpoint, eval as evaluation, logs, models, sharding, train
from pjax.data import batching


def phase_configs(workdir: Path, overrides: dict | None = None):
    sft, dpo = sft_tiny.get_config(), dpo_tiny.get_config()
    sft.workdir = str(workdir / "sft")
    dpo.workdir = str(workdir / "dpo")
    dpo.init_from = str(workdir / "sft" / "export")
    for cfg in (sft, dpo):
        for key, value in (overrides or {}).items():
            node, *path = key.split(".")
            target = cfg
            for part in [node, *path][:-1]:
                target = target[part]
            target[[node, *path][-1]] = value
    return sft, dpo


def evaluate(dpo_config, *, seed: int = 1234) -> dict:
    """Compare the DPO export with its SFT parent on the held-out split."""
    task = train.load_data(dpo_config).task
    model_def = models.build(train.model_config(dpo_config))
    mesh = sharding.make_mesh(dpo_config.mesh.shape)
    with jax.set_mesh(mesh), sharding.use_rules(sharding.config_rules(dpo_config.sharding)):
        shardings = sharding.tree_shardings(model_def.logical_specs, model_def.shapes, mesh,
                                            sharding.config_rules(dpo_config.sharding))
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                model_def.shapes, shardings)
        policy = checkpoint.load_params(Path(dpo_config.workdir) / "export", abstract)
        reference = checkpoint.load_params(dpo_config.init_from, abstract)
        prompts = batching.encode_prompts(task.tokenizer, task.heldout_prompts, dpo_config.data.max_prompt_len)
        pairs = batching.encode_pairs(task.tokenizer, task.heldout_pairs, dpo_config.data.max_len)
        return evaluation.compare_policies(
            model_def, policy, reference, tokenizer=task.tokenizer, prompts=prompts, heldout_pairs=pairs,
            gold_reward=task.gold_reward, seed=seed, max_new_tokens=dpo_config.generate.max_new_tokens)


def format_table(result: dict) -> str:
    ref, pol = result["reference"], result["policy"]
    pm = lambda ms: f"{ms[0]:+.3f} ± {ms[1]:.3f}"  # noqa: E731
    rows = [
        "| held-out prompts | SFT (reference) | DPO |",
        "|---|---|---|",
        f"| gold reward of samples (mean ± s.e.) | {pm(ref['gold_reward'])} | {pm(pol['gold_reward'])} |",
        f"| win rate vs SFT (gold reward) | 0.500 | {pol['win_rate_vs_reference'][0]:.3f} ± "
        f"{pol['win_rate_vs_reference'][1]:.3f} |",
        f"| implicit-reward accuracy, held-out pairs | — | {pol['implicit_reward_accuracy']:.3f} |",
        f"| KL to SFT, nats/sequence (MC ± s.e.) | 0 | {pm(pol['kl_to_reference'])} |",
        f"| mean completion length (tokens) | {ref['mean_length']:.1f} | {pol['mean_length']:.1f} |",
    ]
    for i, ex in enumerate(result["examples"]):
        rows.append(f"\nsample {i + 1}\n  SFT: {ex['reference']}\n  DPO: {ex['policy']}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo")
    args = parser.parse_args()
    logs.configure()
    workdir = Path(args.workdir).resolve()
    sft, dpo = phase_configs(workdir)
    t0 = time.perf_counter()
    train.run(sft)
    train.run(dpo)
    result = evaluate(dpo)
    (workdir / "demo_results.json").write_text(json.dumps(result, indent=2))
    print(f"\nSFT -> DPO on the synthetic task ({time.perf_counter() - t0:.0f} s in all)\n")
    print(format_table(result))


if __name__ == "__main__":
    main()
