"""`python -m pjax.chain --config=configs/pipeline_tiny.py --workdir=<dir>`: the phases in order.

A pipeline config names its phases in order (`phases`), each a whole phase config under its name
(`config.sft`, `config.rm`, ...; override any key with `--config.<name>.<key>=value`), the phase it
starts from (`parents`: name -> parent name) and the reward models the later phases use
(`reward_models`: rm phase names; several form an ensemble). Every phase runs in `<workdir>/<name>/`
with `init_from` the parent's export and, after the reward models, `reward.models` their exports; `<workdir>/<name>/lineage.json`
names its parent and the parent export's id, and `<workdir>/pipeline.json` the state of each phase.

Run again after an interruption, a finished phase (its export at its final step, trained with the
same config from the same parent export) is skipped and the unfinished one resumes from its own
checkpoint. A phase begun with another config or from another export of its parent (e.g. the parent
was trained again for more steps) is moved aside to `<name>.stale-<time>` and trained again. With
`eval.after_each_phase`, each finished phase is evaluated (`pjax.eval`) into `<name>/eval.json`, and
the whole run into `<workdir>/eval/` at the end (in a single process; with several, the log says to
run `python -m pjax.eval` afterwards).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
from ml_collections import ConfigDict

from pjax import api, checkpoint, distributed, logs
from pjax import eval as evaluation

log = logging.getLogger("pjax")

PIPELINE_FILE = "pipeline.json"
LINEAGE_FILE = "lineage.json"


def validate(config: ConfigDict) -> None:
    """Start-up checks of the pipeline config, naming the key (each phase's own config is checked by
    `pjax.validate` when it starts)."""
    names = tuple(config.phases)
    if not names:
        raise ValueError("phases: no phases to run")
    if len(set(names)) != len(names):
        raise ValueError(f"phases={names}: a phase name appears twice")
    for name in names:
        if name not in config or not isinstance(config[name], ConfigDict) or "phase" not in config[name]:
            raise ValueError(f"phases: {name!r} has no phase config (config.{name} with a `phase` key)")
    for name, parent in config.parents.items():
        if name not in names:
            raise ValueError(f"parents.{name}: {name!r} is not one of phases={names}")
        if parent not in names or names.index(parent) >= names.index(name):
            raise ValueError(f"parents.{name}={parent!r}: the parent must be a phase that runs before {name!r}")
    for rm in config.reward_models:
        if rm not in names:
            raise ValueError(f"reward_models: {rm!r} is not one of phases={names}")
        if config[rm].phase != "rm":
            raise ValueError(f"reward_models: {rm!r} is a {config[rm].phase!r} phase, not an rm phase")


def phase_config(config: ConfigDict, name: str, workdir: Path) -> ConfigDict:
    """Phase `name`'s config inside the run: its workdir, its parent's export and the reward model."""
    cfg = copy.deepcopy(config[name])  # keeps the phase config's field types and lock
    cfg.workdir = str(workdir / name)
    parent = config.parents.get(name)
    if parent:
        cfg.init_from = str(workdir / parent / "export")
    names = tuple(config.phases)
    earlier = [rm for rm in config.reward_models if names.index(rm) < names.index(name)]
    if earlier:  # several: an ensemble (aggregated with the phase's reward.aggregate)
        cfg.reward.models = tuple(str(workdir / rm / "export") for rm in earlier)
    return cfg


def config_hash(cfg: ConfigDict) -> str:
    """What identifies a phase's training (its whole config; the run directory's paths excepted)."""
    values = json.loads(cfg.to_json_best_effort(sort_keys=True))
    for key in ("workdir", "init_from", "logging"):  # where, and what it reports to, not what it trains
        values.pop(key, None)
    values.get("reward", {}).pop("models", None)  # used after training, by evaluation
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def status(cfg: ConfigDict) -> str:
    """`finished` (its export at the final step, trained with this config from the parent export there
    now), `stale` (begun or finished with another config or from another parent export: its directory
    is moved aside and the phase trained again), or `pending` (not started, or resumable)."""
    workdir = Path(cfg.workdir)
    lineage_path = workdir / LINEAGE_FILE
    if not lineage_path.exists():
        return "stale" if (workdir / "checkpoints").exists() or (workdir / "export").exists() else "pending"
    lineage = json.loads(lineage_path.read_text())
    parent = checkpoint.export_metadata(cfg.init_from) if cfg.init_from else None
    if lineage.get("parent_export_id") != (parent or {}).get("export_id") or lineage.get("config") != config_hash(cfg):
        return "stale"
    meta = checkpoint.export_metadata(workdir / "export")
    return "finished" if meta is not None and meta.get("step") == cfg.train.steps else "pending"


def move_aside(workdir: Path) -> Path:
    """Keep a stale phase directory (nothing written is lost) under a new name beside it."""
    target = workdir.with_name(f"{workdir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    if distributed.is_leader():
        workdir.rename(target)
    distributed.barrier("pipeline-move-aside")
    return target


def _write_json(path: Path, data: dict[str, Any]) -> None:
    if distributed.is_leader():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(path)


def run(config: ConfigDict, workdir: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) every phase in order; returns the pipeline state written to `pipeline.json`."""
    validate(config)
    root = Path(workdir or config.workdir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    configs = {name: phase_config(config, name, root) for name in config.phases}
    for cfg in configs.values():
        api.validate(cfg)  # every phase's config, before the first one spends any time
    distributed.initialize(configs[config.phases[0]])  # before anything starts JAX's backend
    state_path = root / PIPELINE_FILE
    state: dict[str, Any] = {"workdir": str(root), "phases": {}}
    for name in config.phases:
        cfg = configs[name]
        state["phases"][name] = {"phase": cfg.phase, "workdir": cfg.workdir, "parent": config.parents.get(name) or None,
                                 "init_from": cfg.init_from or None, "reward_models": list(cfg.reward.models),
                                 "status": status(cfg)}
    _write_json(state_path, state)
    _write_json(root / "pipeline_config.json", json.loads(config.to_json_best_effort()))
    evaluate = config.eval.after_each_phase and jax.process_count() == 1
    if config.eval.after_each_phase and not evaluate:
        log.warning("pipeline: evaluation runs in one process; afterwards: python -m pjax.eval --run=%s", root)
    for name in config.phases:
        cfg, entry = configs[name], state["phases"][name]
        entry["status"] = status(cfg)  # again: a parent trained just now makes its children stale
        if entry["status"] == "finished":
            log.info("pipeline: phase %r finished earlier (export %s); skipping it", name, Path(cfg.workdir) / "export")
        else:
            if entry["status"] == "stale":
                moved = move_aside(Path(cfg.workdir))
                log.warning("pipeline: phase %r in %s was trained with another config or from another export of "
                            "its parent; moved it to %s and training it again", name, cfg.workdir, moved)
            parent_meta = checkpoint.export_metadata(cfg.init_from) if cfg.init_from else None
            _write_json(Path(cfg.workdir) / LINEAGE_FILE, {
                "name": name, "phase": cfg.phase, "parent": entry["parent"], "parent_export": cfg.init_from or None,
                "parent_export_id": (parent_meta or {}).get("export_id"), "config": config_hash(cfg),
                "reward_models": entry["reward_models"]})
            entry["status"] = "running"
            _write_json(state_path, state)
            log.info("pipeline: phase %r (%s) in %s%s", name, cfg.phase, cfg.workdir,
                     f", from {cfg.init_from}" if cfg.init_from else "")
            t0 = time.perf_counter()
            summary = api.train(cfg)
            if summary["preempted"]:
                entry["status"] = "preempted"
                _write_json(state_path, state)
                log.warning("pipeline: preempted during phase %r; run the same command again to resume", name)
                return state
            entry.update(status="finished", seconds=round(time.perf_counter() - t0, 1))
            entry["final"] = summary["history"][-1] if summary["history"] else {}
            _write_json(state_path, state)
        entry["export_id"] = checkpoint.export_metadata(Path(cfg.workdir) / "export")["export_id"]
        if evaluate:
            entry["eval"] = evaluation.evaluate_phase(root, name, evaluation.options_from_config(config.eval))
        _write_json(state_path, state)
    if evaluate:
        evaluation.evaluate_run(root, evaluation.options_from_config(config.eval))
    return state


def main(argv) -> None:
    del argv
    logs.configure()
    config = _CONFIG.value
    run(config, _WORKDIR.value or None)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a pipeline config .py file.", lock_config=True)
    _WORKDIR = flags.DEFINE_string("workdir", "", "The run directory (default: the config's workdir).")
    app.run(main)
