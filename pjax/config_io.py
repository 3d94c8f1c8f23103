"""A run's resolved config as `<workdir>/config.json`, and back: rerun any point exactly.

    python -m pjax.train --config=pjax/config_io.py:runs/sft --config.workdir=runs/sft_again

(`path:arg` is ml_collections' config-file argument: `get_config(arg)` below loads `arg`'s
config.json; overrides apply on top as usual. The same workdir would resume that run instead.)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from configs import base

log = logging.getLogger("pjax")

CONFIG_FILE = "config.json"
ALLOW_SAVED_PYTHON = "PJAX_ALLOW_SAVED_PYTHON_REWARD"  # =1: a saved config's python: reward may be imported
REFUSED = "refused-from-saved-config:"  # the prefix load_run_config gives a saved python: reward


def config_json(config: ConfigDict) -> str:
    """The config as JSON (tuples become lists; `load_run_config` turns them back)."""
    return config.to_json_best_effort(indent=2, sort_keys=True)


def save_run_config(workdir: str | os.PathLike, config: ConfigDict) -> Path:
    """Writes `<workdir>/config.json` atomically; returns its path."""
    path = Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(config_json(config) + "\n")
    os.replace(tmp, path)
    return path


def load_run_config(path: str | os.PathLike) -> ConfigDict:
    """The config a run saved (`path`: its workdir or its config.json), as a ConfigDict equal to the
    one it ran with: a phase's config is laid over the current defaults (`configs.base`), so JSON
    lists become tuples where the field is a tuple, and keys this version added since keep their
    defaults (logged). Any other JSON config (e.g. a pipeline's `pipeline_config.json`) is read as
    saved, every list a tuple."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (a pjax workdir holds the config.json of its run)")
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(saved).__name__}")
    if "phase" not in saved:  # not a phase's config (e.g. a pipeline's pipeline_config.json): as saved
        return ConfigDict(_like(saved, None))
    config = base.get_config()
    missing: list[str] = []
    _overlay(config, saved, "", missing, str(path))
    if missing:
        log.warning("%s predates config keys %s: they keep their defaults", path, ", ".join(missing))
    reward = str(config.online.reward)
    if reward.startswith("python:") and os.environ.get(ALLOW_SAVED_PYTHON) != "1":
        # code named in a file, which may be someone else's: not imported unless the user says so
        config.online.reward = f"{REFUSED}{reward}"
    return config


# What a resumed run compares with the config its checkpoints were written with: these sections ...
RESUME_COMPARED = ("phase", "seed", "init_from", "import_from", "model", "loss", "online", "reward", "optim",
                   "data", "train.batch_size", "train.grad_accum")
# ... except these keys, which change how a run computes or reports, not what it trains
RESUME_SAFE = ("model.remat", "model.scan_layers", "model.attention", "data.cache_dir", "data.layout",
               "data.pack_len", "data.precompute_ref", "data.tfds_data_dir")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, (dict, ConfigDict)):
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def resume_changes(saved: ConfigDict, config: ConfigDict, allowed: tuple[str, ...] = ()) -> list[str]:
    """`key: old -> new` for every training-relevant key (`RESUME_COMPARED`, less `RESUME_SAFE` and
    `allowed`) whose value differs between the config a run's checkpoints were written with and this one."""
    old, new = _flat(json.loads(config_json(saved))), _flat(json.loads(config_json(config)))
    skip = RESUME_SAFE + tuple(allowed)

    def compared(key: str) -> bool:
        under = lambda names: any(key == n or key.startswith(n + ".") for n in names)  # noqa: E731
        return under(RESUME_COMPARED) and not under(skip)

    keys = sorted(k for k in set(old) | set(new) if compared(k))
    missing = "(not set)"
    return [f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}" for k in keys
            if old.get(k, missing) != new.get(k, missing)]


def check_resume_config(workdir: str | os.PathLike, config: ConfigDict, has_checkpoint: bool) -> None:
    """A run about to resume its own checkpoint must train what they were written with: a change of the
    model, objective, algorithm, data or optimizer stops it, naming every key with its old and new value
    (`train.resume_changes` lists keys that may change on purpose, e.g. `("optim.lr",)`)."""
    path = Path(workdir) / CONFIG_FILE
    if not has_checkpoint or not path.exists():
        return
    saved = load_run_config(path)
    saved.online.reward = str(saved.online.reward).removeprefix(REFUSED)  # compared, never imported here
    changes = resume_changes(saved, config, tuple(config.train.resume_changes))
    if changes:
        raise ValueError(f"{workdir} holds checkpoints of a run with another config; this one changes "
                         f"{len(changes)} key(s): " + "; ".join(changes[:8]) + ("; ..." if len(changes) > 8 else "")
                         + ". Use the config they were written with, a new workdir, or list the keys in "
                         "train.resume_changes to change them on purpose")


def find_key(cfg: ConfigDict, dotted: str) -> tuple[ConfigDict, str]:
    """(the section holding `dotted`, its last name) of an existing key, e.g. `loss.beta`; a KeyError
    names the first part that does not exist."""
    *parents, leaf = dotted.split(".")
    node = cfg
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], ConfigDict):
            raise KeyError(f"config key {'.'.join(parents[:i + 1])!r} does not exist (in {dotted!r})")
        node = node[part]
    if leaf not in node:
        raise KeyError(f"config key {dotted!r} does not exist")
    return node, leaf


def get_config(path: str = "") -> ConfigDict:
    """ml_collections config-file entry point: `--config=pjax/config_io.py:<workdir or config.json>`."""
    if not path:
        raise ValueError("name the run to load: --config=pjax/config_io.py:<workdir or its config.json>")
    return load_run_config(path)


def _overlay(config: ConfigDict, saved: dict[str, Any], prefix: str, missing: list[str], where: str) -> None:
    for key in config:
        if key not in saved:
            missing.append(prefix + key)
    for key, value in saved.items():
        name = prefix + key
        current = config.get(key)
        if isinstance(current, ConfigDict):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: {name} should be an object, got {value!r}")
            _overlay(current, value, name + ".", missing, where)
        elif key in config:
            try:
                config[key] = _like(value, current)
            except TypeError as e:
                raise ValueError(f"{where}: {name}={value!r}: {e}") from e
        else:  # a key the defaults lack (e.g. a pipeline's phases, an added sharding preset)
            config[key] = ConfigDict(_like(value, None)) if isinstance(value, dict) else _like(value, None)


def _like(value: Any, default: Any) -> Any:
    """A JSON value in the container types of `default`: lists are tuples unless the default is a list."""
    if isinstance(value, list):
        items = [_like(v, None) for v in value]
        return items if isinstance(default, list) else tuple(items)
    if isinstance(value, dict):
        return {k: _like(v, None) for k, v in value.items()}
    return value
