"""`python -m pjax.eval --run=<dir>`: evaluation of a pipeline run (`pjax.chain`), phase by phase.

On held-out data (the synthetic task's held-out prompts and pairs, or the `data.num_heldout` rows of a
dataset):
- a reward model: its accuracy on held-out pairs (each head, and the ensemble aggregated with its
  `reward.aggregate`), and on the synthetic task its agreement with the gold reward's ordering;
- a policy: completions sampled at temperature 1 for held-out prompts, scored by the learned reward
  model (`reward.models`, standardised) and, on the synthetic task, by the gold reward; against its
  reference (the parent export, when that is a policy): win rates under each reward (the two
  policies' samples for the same prompt compared, ties half), the sequence-level KL(pi || pi_ref)
  as a Monte Carlo mean of log pi(y) - log pi_ref(y) over its samples with its standard error, and
  DPO's implicit-reward accuracy on held-out pairs;
- best-of-N of the base policy (the reference of the last policy) through the reward model: the
  reward of the best of N samples for each N against the KL bound log N - (N-1)/N, under the reward
  model and the gold reward (over-optimisation), plotted to `eval/best_of_n.png`.

Output: `<dir>/<phase>/eval.json` per phase, `<dir>/eval/eval.json` and `eval.md` (a markdown table)
for the run, and the same figures in TensorBoard (`<dir>/eval/tb`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from pjax import bestofn, checkpoint, distributed, generate, logs, models, sharding
from pjax.data import batching, load
from pjax.metrics import MetricWriter
from pjax.models import ModelDef
from pjax.rewards import Member, RewardModel

log = logging.getLogger("pjax")


def mean_stderr(x: Sequence[float]) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(x.mean()), se


@functools.partial(jax.jit, static_argnames=("model_def", "temperature"))
def completion_logps(model_def: ModelDef, params: Any, tokens: jax.Array, mask: jax.Array,
                     completion_mask: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Summed log-probs of the completion tokens: `[...]` for `tokens` of shape `[..., T]`."""
    lp = models.sequence_token_logprobs(model_def, params, tokens, mask, temperature=temperature)
    return (lp * completion_mask[..., 1:]).sum(-1)


def sample(model_def: ModelDef, params: Any, prompts: dict[str, np.ndarray], *, seed: int, max_new_tokens: int,
           eos_id: int | tuple[int, ...], pad_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           num_samples: int = 1, chunk: int = 256) -> dict[str, np.ndarray]:
    """`num_samples` completions per (left-padded) prompt, row `p * num_samples + j` the j-th of prompt p
    (`prompt_index` says p); sampled `chunk` rows at a time (one compilation: the last chunk wraps
    around); numpy outputs."""
    tokens = np.repeat(np.asarray(prompts["tokens"]), num_samples, axis=0)
    mask = np.repeat(np.asarray(prompts["mask"]), num_samples, axis=0)
    n = len(tokens)
    size = min(chunk, n)
    parts = []
    for i, start in enumerate(range(0, n, size)):
        idx = np.arange(start, start + size) % n
        out = generate.generate(model_def, params, jnp.asarray(tokens[idx]), jnp.asarray(mask[idx]),
                                jax.random.fold_in(jax.random.key(seed), i), max_new_tokens=max_new_tokens,
                                eos_id=eos_id, pad_id=pad_id, temperature=temperature, top_k=top_k, top_p=top_p)
        parts.append(jax.device_get(out))
    out = {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}
    out["prompt_index"] = np.repeat(np.arange(len(prompts["tokens"])), num_samples)
    return out


def kl_to_reference(model_def: ModelDef, params: Any, ref_params: Any, samples: dict,
                    ref_def: ModelDef | None = None) -> tuple[float, float]:
    """KL(pi || pi_ref) ~ mean over y ~ pi of log pi(y) - log pi_ref(y) (samples drawn at T=1); `ref_def`
    when the reference is another model (e.g. without the policy's value head)."""
    args = (samples["tokens"], samples["mask"], samples["completion_mask"])
    diff = completion_logps(model_def, params, *args) - completion_logps(ref_def or model_def, ref_params, *args)
    return mean_stderr(np.asarray(diff))


def implicit_reward_accuracy(model_def: ModelDef, params: Any, ref_params: Any, pairs: dict[str, np.ndarray],
                             batch_size: int = 64, ref_def: ModelDef | None = None) -> float:
    """Fraction of pairs with rho(chosen) > rho(rejected), rho = log pi/pi_ref (DPO's implicit reward);
    ties count half (0.5 for the reference itself), as the held-out figures of `pjax.train`."""
    hits = []
    for i in range(0, len(pairs["tokens"]), batch_size):
        args = tuple(pairs[k][i:i + batch_size] for k in ("tokens", "mask", "completion_mask"))
        rho = np.asarray(completion_logps(model_def, params, *args)
                         - completion_logps(ref_def or model_def, ref_params, *args))
        hits.append((rho[:, 0] > rho[:, 1]) + 0.5 * (rho[:, 0] == rho[:, 1]))
    return float(np.concatenate(hits).mean())


def decode_completions(tokenizer, samples: dict) -> list[str]:
    return [tokenizer.decode(row[: int(n)]) for row, n in zip(samples["completion"], samples["lengths"])]


def win_rate(policy: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """How often the policy's sample beats the reference's for the same prompt (ties count half)."""
    return mean_stderr((policy > reference) + 0.5 * (policy == reference))


# --- the held-out data of a phase ----------------------------------------------------------------------


@dataclasses.dataclass
class Heldout:
    """Held-out prompts (left-padded `[P, L]`, with their text when known), pairs `[N, 2, T]` (or None),
    the tokenizer and, on the synthetic task, the gold reward of a completion's text."""

    tokenizer: Any
    prompts: dict[str, np.ndarray]
    prompt_texts: list[str]
    pairs: dict[str, np.ndarray] | None
    gold: Callable[[str, str], float] | None  # (prompt, completion) -> the task's gold or verifiable reward


def prompts_from_rows(rows: dict[str, np.ndarray], pad_id: int, length: int) -> dict[str, np.ndarray]:
    """The prompts of encoded rows (`[N, T]` or, for pairs and lists, their first completion's row):
    the real tokens before the completion, left-padded to `length` (cut from the left)."""
    tokens, mask, completion = (rows[k] if rows[k].ndim == 2 else rows[k][:, 0]
                                for k in ("tokens", "mask", "completion_mask"))
    out_t = np.full((len(tokens), length), pad_id, np.int32)
    out_m = np.zeros((len(tokens), length), np.int32)
    for i in range(len(tokens)):
        prompt = tokens[i][(mask[i] > 0) & (completion[i] == 0)][-length:]
        out_t[i, length - len(prompt):], out_m[i, length - len(prompt):] = prompt, 1
    return {"tokens": out_t, "mask": out_m}


def load_heldout(config: ConfigDict, num_prompts: int) -> Heldout:
    """A phase's held-out data: the synthetic task's held-out prompts and pairs, or the held-out rows
    of `data.path` (`data.num_heldout`; prompts taken from their rows, pairs when they are pairs)."""
    data = load.load_data(config)
    tok = data.tokenizer
    if not config.data.path:
        task = data.task
        texts = task.heldout_prompts[:num_prompts]
        gold = task.reward if getattr(task, "reward", None) is not None else \
            (lambda prompt, completion: task.gold_reward(completion))
        pairs = batching.encode_pairs(tok, task.heldout_pairs, config.data.max_len) if task.heldout_pairs else None
        return Heldout(tok, batching.encode_prompts(tok, texts, config.data.max_prompt_len), texts, pairs, gold)
    if data.heldout is None:
        raise ValueError(f"{config.workdir}: evaluation on data.path={config.data.path!r} needs held-out rows: "
                         "set data.num_heldout")
    rows = {k: np.asarray(v[:num_prompts]) for k, v in data.heldout.items()}
    prompts = prompts_from_rows(rows, tok.pad_id, config.data.max_prompt_len)
    texts = [tok.decode(t[m > 0]) for t, m in zip(prompts["tokens"], prompts["mask"])]
    pairs = data.heldout if data.heldout["tokens"].ndim == 3 and data.heldout["tokens"].shape[1] == 2 else None
    return Heldout(tok, prompts, texts, pairs, None)


# --- a run directory -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
    num_prompts: int = 128
    max_new_tokens: int = 0  # 0: the phase's generate.max_new_tokens
    seed: int = 1234
    best_of_n: tuple[int, ...] = (1, 2, 4, 8, 16)
    best_of_n_prompts: int = 64

    def key(self) -> str:
        """What a phase's figures depend on (best-of-N is the run's)."""
        phase = {k: v for k, v in dataclasses.asdict(self).items() if not k.startswith("best_of_n")}
        return hashlib.sha256(json.dumps(phase, sort_keys=True).encode()).hexdigest()[:16]


def options_from_config(c: ConfigDict) -> Options:
    return Options(num_prompts=int(c.num_prompts), max_new_tokens=int(c.max_new_tokens), seed=int(c.seed),
                   best_of_n=tuple(int(n) for n in c.best_of_n), best_of_n_prompts=int(c.best_of_n_prompts))


def read_run(root: Path) -> dict[str, dict[str, Any]]:
    """The phases of a pipeline run (`pipeline.json`), in order; a single phase's directory
    (`python -m pjax.train`) is a run of that one phase, its reference the export it started from."""
    path = Path(root) / "pipeline.json"
    if path.exists():
        return json.loads(path.read_text())["phases"]
    meta = checkpoint.export_metadata(Path(root) / "export")
    if meta is None:
        raise FileNotFoundError(f"--run={str(root)!r}: neither a pipeline run (pipeline.json) nor a phase directory "
                                "with a finished export")
    return {Path(root).name: {"phase": meta["phase"], "workdir": str(Path(root).resolve()),
                              "init_from": meta.get("init_from") or None}}


def phase_config(workdir: str | Path) -> ConfigDict:
    """The resolved config a phase ran with (`<workdir>/config.json`)."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (the phase has not started)")
    return ConfigDict(json.loads(path.read_text()))


class Exports:
    """Exports loaded once per evaluation, on one mesh."""

    def __init__(self, mesh, rules):
        self.mesh, self.rules, self._cache = mesh, rules, {}

    def __call__(self, export: str):
        if export not in self._cache:
            self._cache[export] = checkpoint.load_export(export, self.mesh, self.rules)
        return self._cache[export]


def _reward_model(config: ConfigDict, loaded: Exports):
    if not config.reward.models:
        return None
    members = []
    for export in config.reward.models:
        model_def, params, meta = loaded(export)
        stats = meta.get("reward_stats") or {}
        members.append(Member(export, model_def, params, np.asarray(stats["mean"]) if stats else None,
                              np.asarray(stats["std"]) if stats else None))
    r = config.reward
    return RewardModel(members, loaded.mesh, loaded.rules, aggregate=r.aggregate, uwo_lambda=r.uwo_lambda,
                       normalize=r.normalize, batch_size=config.train.batch_size)


def _scores(samples: dict, texts: list[str], heldout: Heldout, rm) -> dict[str, np.ndarray]:
    """Rewards of samples under the RM and the gold reward (which reads each sample's prompt)."""
    out = {}
    if rm is not None:
        out["rm"] = rm(samples["tokens"], samples["mask"])
    if heldout.gold is not None:
        prompts = [heldout.prompt_texts[i] for i in samples["prompt_index"]]
        out["gold"] = np.array([heldout.gold(p, t) for p, t in zip(prompts, texts)])
    return out


def evaluate_reward_model(config: ConfigDict, export: str, heldout: Heldout, loaded: Exports) -> dict[str, Any]:
    """Accuracy on held-out pairs of each head and of the aggregated ensemble; gold agreement."""
    if heldout.pairs is None:
        return {}
    model_def, params, meta = loaded(export)
    stats = meta.get("reward_stats")
    r = config.reward
    rm = RewardModel([Member(export, model_def, params, np.asarray(stats["mean"]) if stats else None,
                             np.asarray(stats["std"]) if stats else None)], loaded.mesh, loaded.rules,
                     aggregate=r.aggregate, uwo_lambda=r.uwo_lambda, normalize=bool(r.normalize and stats),
                     batch_size=config.train.batch_size)  # the reward as it is used downstream
    pairs = heldout.pairs
    n, T = len(pairs["tokens"]), pairs["tokens"].shape[-1]
    flat = {k: pairs[k].reshape(2 * n, T) for k in ("tokens", "mask")}
    heads = rm.head_rewards(flat["tokens"], flat["mask"]).reshape(n, 2, -1)
    aggregated = rm(flat["tokens"], flat["mask"]).reshape(n, 2)
    out = {"reward_accuracy": float(np.mean(aggregated[:, 0] > aggregated[:, 1])), "num_pairs": n,
           "reward_stats": meta.get("reward_stats")}
    if heads.shape[-1] > 1:
        out["reward_accuracy_per_head"] = [float(a) for a in np.mean(heads[:, 0] > heads[:, 1], axis=0)]
    if heldout.gold is not None:  # against the true ordering (the labels are Bradley-Terry samples)
        texts = [[heldout.tokenizer.decode(t[(m > 0) & (c > 0)]) for t, m, c in
                  zip(pairs["tokens"][:, j], pairs["mask"][:, j], pairs["completion_mask"][:, j])] for j in (0, 1)]
        gold = np.array([[heldout.gold("", a), heldout.gold("", b)] for a, b in zip(*texts)])  # pairs: the synthetic task
        decided = gold[:, 0] != gold[:, 1]
        agree = (aggregated[:, 0] > aggregated[:, 1]) == (gold[:, 0] > gold[:, 1])
        out["gold_agreement"] = float(agree[decided].mean())
    return out


def evaluate_policy(config: ConfigDict, export: str, reference: str | None, heldout: Heldout, loaded: Exports,
                    options: Options) -> dict[str, Any]:
    """Samples of the policy (and of its reference) for the held-out prompts, scored; win rates, KL."""
    model_def, params, _ = loaded(export)
    tok = heldout.tokenizer
    rm = _reward_model(config, loaded)
    kw = dict(seed=options.seed, max_new_tokens=options.max_new_tokens or config.generate.max_new_tokens,
              eos_id=tuple(tok.stop_ids), pad_id=tok.pad_id)
    samples = sample(model_def, params, heldout.prompts, **kw)
    texts = decode_completions(tok, samples)
    scores = _scores(samples, texts, heldout, rm)
    out: dict[str, Any] = {"num_prompts": len(texts), "mean_length": float(samples["lengths"].mean()),
                           "hit_length_limit": float(np.mean(samples["lengths"] >= kw["max_new_tokens"]))}
    out.update({f"{name}_reward": mean_stderr(s) for name, s in scores.items()})
    examples = [{"prompt": p, "policy": t} for p, t in zip(heldout.prompt_texts[:3], texts[:3])]
    if reference is not None:
        ref_def, ref_params, _ = loaded(reference)
        ref_samples = sample(ref_def, ref_params, heldout.prompts, **{**kw, "seed": kw["seed"] + 1})  # independent
        ref_texts = decode_completions(tok, ref_samples)
        ref_scores = _scores(ref_samples, ref_texts, heldout, rm)
        out["reference"] = reference
        out.update({f"reference_{name}_reward": mean_stderr(s) for name, s in ref_scores.items()})
        out.update({f"win_rate_{name}": win_rate(scores[name], ref_scores[name]) for name in scores})
        out["kl_to_reference"] = kl_to_reference(model_def, params, ref_params, samples, ref_def)
        if heldout.pairs is not None:
            out["implicit_reward_accuracy"] = implicit_reward_accuracy(model_def, params, ref_params, heldout.pairs,
                                                                       batch_size=config.train.batch_size,
                                                                       ref_def=ref_def)
        for ex, t in zip(examples, ref_texts):
            ex["reference"] = t
    out["examples"] = examples
    return out


def best_of_n(config: ConfigDict, export: str, heldout: Heldout, loaded: Exports, options: Options,
              plot_path: Path) -> dict[str, Any]:
    """Best-of-N of a policy's samples through the reward model, N in `options.best_of_n`: per N the
    expected reward of the best of N (unbiased, from max(N) samples per prompt) under the reward model
    and, selected by it, under the gold reward (plus the gold-selected oracle), against the KL bound."""
    rm = _reward_model(config, loaded)
    if rm is None or not options.best_of_n:
        return {}
    model_def, params, _ = loaded(export)
    tok, m = heldout.tokenizer, max(options.best_of_n)
    prompts = {k: v[:options.best_of_n_prompts] for k, v in heldout.prompts.items()}
    samples = sample(model_def, params, prompts, seed=options.seed + 1, num_samples=m, eos_id=tuple(tok.stop_ids),
                     pad_id=tok.pad_id, max_new_tokens=options.max_new_tokens or config.generate.max_new_tokens)
    texts = decode_completions(tok, samples)
    scores = _scores(samples, texts, heldout, rm)
    p = len(prompts["tokens"])
    proxy = scores["rm"].reshape(p, m)
    curves = {"rm": bestofn.best_of_n_curve(proxy, options.best_of_n)}
    if "gold" in scores:
        gold = scores["gold"].reshape(p, m)
        curves["gold_selected_by_rm"] = bestofn.best_of_n_curve(gold, options.best_of_n, selection_rewards=proxy)
        curves["gold_oracle"] = bestofn.best_of_n_curve(gold, options.best_of_n)
    bestofn.plot_best_of_n(plot_path, {CURVES[k]: v for k, v in curves.items()},
                           title=f"best-of-N of {Path(export).parent.name}: reward vs KL bound")
    return {"policy": export, "prompts": p, "samples_per_prompt": m, "curves": curves, "plot": str(plot_path)}


CURVES = {"rm": "reward model (selects; standardised)", "gold_selected_by_rm": "gold, selected by the reward model",
          "gold_oracle": "gold, selected by gold (oracle)"}


def evaluate_phase(root: str | Path, name: str, options: Options = Options(), *, use_cache: bool = True
                   ) -> dict[str, Any]:
    """Evaluate phase `name` of the run in `root` into `<root>/<name>/eval.json` (reused while its
    export and the options are unchanged)."""
    root = Path(root)
    phases = read_run(root)
    entry = phases[name]
    workdir = Path(entry["workdir"])
    export = str(workdir / "export")
    meta = checkpoint.export_metadata(export)
    if meta is None:
        raise FileNotFoundError(f"phase {name!r}: no finished export in {export}")
    config = phase_config(workdir)
    parent = entry.get("init_from")
    parent_meta = checkpoint.export_metadata(parent) if parent else None
    reference = parent if config.phase != "rm" and parent_meta and parent_meta["model"].get("head", "lm") == "lm" \
        else None
    depends = [meta["export_id"], options.key(), parent_meta["export_id"] if reference else None,
               *(_export_id(e) for e in config.reward.models)]  # the figures change with any of these
    cache = workdir / "eval.json"
    if use_cache and cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("depends") == depends:
            return cached
    mesh = sharding.make_mesh(config.mesh.shape)
    rules = sharding.config_rules(config.sharding)
    with jax.set_mesh(mesh), sharding.use_rules(rules):
        loaded = Exports(mesh, rules)
        heldout = load_heldout(config, options.num_prompts)
        if config.phase == "rm":
            result = evaluate_reward_model(config, export, heldout, loaded)
        else:
            result = evaluate_policy(config, export, reference, heldout, loaded, options)
    result = {"phase": config.phase, "name": name, "export": export, "export_id": meta["export_id"],
              "step": meta["step"], "depends": depends, **result}
    if distributed.is_leader():
        cache.write_text(json.dumps(result, indent=2))
    log.info("eval %s: %s", name, json.dumps({k: v for k, v in result.items() if k != "examples"}))
    return result


def _export_id(export: str) -> str | None:
    meta = checkpoint.export_metadata(export)
    return None if meta is None else meta["export_id"]


def evaluate_run(root: str | Path, options: Options = Options(), *, use_cache: bool = True) -> dict[str, Any]:
    """Every finished phase of the run, best-of-N of the base policy, written to `<root>/eval/`."""
    root = Path(root)
    phases = read_run(root)
    done = [n for n, e in phases.items() if checkpoint.export_metadata(Path(e["workdir"]) / "export")]
    results = {n: evaluate_phase(root, n, options, use_cache=use_cache) for n in done}
    out_dir = root / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    run: dict[str, Any] = {"workdir": str(root), "phases": results}
    policies = [n for n in done if results[n]["phase"] != "rm"]
    if policies and options.best_of_n:
        last = policies[-1]
        base = results[last].get("reference") or results[last]["export"]
        config = phase_config(phases[last]["workdir"])
        depends = [_export_id(base), json.dumps(dataclasses.asdict(options), sort_keys=True),
                   *(_export_id(e) for e in config.reward.models)]
        cached = out_dir / "best_of_n.json"
        if use_cache and cached.exists() and json.loads(cached.read_text()).get("depends") == depends \
                and (out_dir / "best_of_n.png").exists():
            run["best_of_n"] = json.loads(cached.read_text())
        elif config.reward.models:
            mesh = sharding.make_mesh(config.mesh.shape)
            rules = sharding.config_rules(config.sharding)
            with jax.set_mesh(mesh), sharding.use_rules(rules):
                heldout = load_heldout(config, max(options.num_prompts, options.best_of_n_prompts))
                run["best_of_n"] = {**best_of_n(config, base, heldout, Exports(mesh, rules), options,
                                                out_dir / "best_of_n.png"), "depends": depends}
            if distributed.is_leader():
                cached.write_text(json.dumps(run["best_of_n"], indent=2))
    if not distributed.is_leader():
        return run
    (out_dir / "eval.json").write_text(json.dumps(run, indent=2))
    (out_dir / "eval.md").write_text(format_markdown(run))
    shutil.rmtree(out_dir / "tb", ignore_errors=True)  # the figures of this evaluation only
    writer = MetricWriter(out_dir, resume_step=-1)
    for i, (name, r) in enumerate(results.items()):
        writer.write(i, {f"{name}/{k}": v for k, v in scalars(r).items()})
    for label, curve in run.get("best_of_n", {}).get("curves", {}).items():
        for point in curve:
            writer.write(point["n"], {f"best_of_n/{label}": point["mean"], f"best_of_n/{label}_se": point["stderr"]})
    writer.close()
    log.info("eval: %s", out_dir / "eval.md")
    return run


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


MEAN_SE = ("gold_reward", "rm_reward", "reference_gold_reward", "reference_rm_reward", "win_rate_gold",
           "win_rate_rm", "kl_to_reference")  # figures stored as (mean, standard error)


def scalars(result: dict[str, Any]) -> dict[str, float]:
    """A phase's figures as named scalars (TensorBoard): means and `<name>_se`, one per ensemble head."""
    out = {}
    for key, value in result.items():
        if key in MEAN_SE:
            out[key], out[f"{key}_se"] = value
        elif _is_number(value) and key != "step":
            out[key] = value
        elif key == "reward_accuracy_per_head":
            out.update({f"{key}/{i}": v for i, v in enumerate(value)})
    return out


ROWS = (  # (label, key in a phase's result)
    ("gold reward of samples (mean ± s.e.)", "gold_reward"),
    ("reward-model reward of samples (standardised)", "rm_reward"),
    ("win rate vs reference, gold reward", "win_rate_gold"),
    ("win rate vs reference, reward model", "win_rate_rm"),
    ("KL to reference, nats/sequence (MC ± s.e.)", "kl_to_reference"),
    ("implicit-reward accuracy, held-out pairs", "implicit_reward_accuracy"),
    ("reward-model accuracy, held-out pairs", "reward_accuracy"),
    ("reward-model agreement with the gold ordering", "gold_agreement"),
    ("mean completion length (tokens)", "mean_length"),
)


def format_markdown(run: dict[str, Any]) -> str:
    """The run's figures as markdown: one column per phase, then the best-of-N curve."""
    results = run["phases"]
    names = list(results)
    fmt = lambda v: "—" if v is None else f"{v[0]:+.3f} ± {v[1]:.3f}" if isinstance(v, (list, tuple)) \
        else f"{v:.3f}"  # noqa: E731
    lines = ["| held-out | " + " | ".join(f"{n} ({results[n]['phase']})" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for label, key in ROWS:
        values = [results[n].get(key) for n in names]
        if any(v is not None for v in values):
            lines.append(f"| {label} | " + " | ".join(fmt(v) for v in values) + " |")
    bon = run.get("best_of_n")
    if bon:
        labels = list(bon["curves"])
        lines += ["", f"Best-of-N of `{bon['policy']}` ({bon['prompts']} prompts, {bon['samples_per_prompt']} "
                  "samples each; unbiased subset estimates):", "",
                  "| N | KL bound (nats) | " + " | ".join(CURVES[k] for k in labels) + " |", "|---|---|" + "---|" * len(labels)]
        for i, point in enumerate(bon["curves"][labels[0]]):
            cells = [fmt((bon["curves"][label][i]["mean"], bon["curves"][label][i]["stderr"])) for label in labels]
            lines.append(f"| {point['n']} | {point['kl_bound']:.3f} | " + " | ".join(cells) + " |")
    for n in names:
        for i, ex in enumerate(results[n].get("examples", [])[:2]):
            lines.append(f"\n{n}, sample {i + 1}: {ex['prompt']!r}\n  {n}: {ex['policy']!r}"
                         + (f"\n  reference: {ex['reference']!r}" if "reference" in ex else ""))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Evaluate a pjax pipeline run (see the module docstring).")
    parser.add_argument("--run", required=True, help="the run directory of `python -m pjax.chain`")
    parser.add_argument("--num_prompts", type=int, default=Options.num_prompts)
    parser.add_argument("--max_new_tokens", type=int, default=0)
    parser.add_argument("--seed", type=int, default=Options.seed)
    parser.add_argument("--best_of_n", default="1,2,4,8,16", help="comma-separated N ('' = skip)")
    parser.add_argument("--best_of_n_prompts", type=int, default=Options.best_of_n_prompts)
    parser.add_argument("--no_cache", action="store_true", help="recompute every phase's figures")
    args = parser.parse_args(argv)
    logs.configure()
    options = Options(num_prompts=args.num_prompts, max_new_tokens=args.max_new_tokens, seed=args.seed,
                      best_of_n=tuple(int(n) for n in args.best_of_n.split(",") if n.strip()),
                      best_of_n_prompts=args.best_of_n_prompts)
    run = evaluate_run(args.run, options, use_cache=not args.no_cache)
    print(format_markdown(run))
    return run


if __name__ == "__main__":
    main()
