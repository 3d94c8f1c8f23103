"""Where a phase's train state comes from: its own checkpoint, else the parent export (`init_from`,
partially restored under fresh heads where the model has new ones), else an imported Hugging Face or
GGUF checkpoint (`import_from`), else a fresh initialisation; the order said in the log."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from pjax import checkpoint
from pjax.core.setup import Setup, State
from pjax.models import gguf, hf
from pjax.models.llama import LlamaConfig

log = logging.getLogger("pjax")

HEAD_FIELDS = ("head", "reward_heads", "value_head", "value_backbone")  # what a partial restore may change


def new_heads(export: str, cfg: LlamaConfig) -> bool:
    """Whether this model has heads its parent export lacks (a partial restore: `backbone_with_fresh_head`)."""
    meta = checkpoint.export_metadata(export)
    if meta is None:
        return False
    model = {**dict(head="lm", reward_heads=1, value_head=False, value_backbone="shared"), **meta.get("model", {})}
    return any(model[k] != getattr(cfg, k) for k in HEAD_FIELDS)


def backbone_with_fresh_head(setup: Setup, export: str, value_from: str = "") -> Any:
    """A partial restore: the parent export's parameters wherever this model has the same ones
    (embeddings, layers, final norm; the LM head of a policy) and freshly initialised heads elsewhere,
    e.g. a reward model (`score`) from an SFT export (whose LM head is left out), or a PPO policy with a
    new value head (`value`). A separate value model (`critic`) takes its backbone from
    `value_from` (an export: e.g. the reward model, as TRL does) or else from the parent, under a fresh value
    head. Placed with the train state's shardings."""
    parent_def, parent, _ = checkpoint.load_export(export, setup.mesh, setup.rules)
    fresh = setup.init_params(setup.config.seed)
    heads = ("lm_head", "score", "value", "critic")
    params = {k: v for k, v in parent.items() if k in fresh and (k not in heads or k == "lm_head")}
    if "critic" in fresh and "critic" not in parent:
        source = parent if not value_from else checkpoint.load_export(value_from, setup.mesh, setup.rules)[1]
        params["critic"] = {**{k: source[k] for k in ("embed", "layers", "final_norm")},
                            "value": fresh["critic"]["value"]}
        log.info("value model: backbone from %s, fresh value head", value_from or export)
    params.update({k: v for k, v in fresh.items() if k not in params})
    if jax.tree.structure(params) != jax.tree.structure(fresh) or any(
            a.shape != b.shape for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fresh))):
        raise ValueError(f"init_from={export!r}{f' and online.value_from={value_from!r}' if value_from else ''}: "
                         f"their parameters ({sorted(parent)}) do not give this model's {sorted(fresh)} under new heads")
    new = sorted("critic.value" if k == "critic" else k for k in fresh if k not in parent)
    log.info("partial restore: %s from %s (head %r), fresh %s", sorted(k for k in params if k in parent), export,
             parent_def.cfg.head, new)
    return params


def import_params(setup: Setup, path: str) -> Any:
    """Parameters of a Hugging Face checkpoint directory or a GGUF file (`import_from`), placed with the
    train state's shardings; its architecture must match the configured model (the keys that differ
    are named)."""
    source = Path(path).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"import_from={path!r}: no such file or directory")
    is_gguf = source.suffix == ".gguf"
    theirs = gguf.config_from_gguf(source) if is_gguf else hf.config_from_hf(
        json.loads((source / "config.json").read_text()))
    ours = dataclasses.asdict(setup.model_def.cfg)
    ignored = ("max_seq_len", "param_dtype", "dtype", "remat", "scan_layers", "attention", "head")
    diff = {k: (v, ours[k]) for k, v in theirs.items() if k in ours and k not in ignored and
            checkpoint._norm(v) != checkpoint._norm(ours[k])}
    if diff:
        detail = ", ".join(f"model.{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"import_from={path!r} does not match the configured model: {detail}")
    loader = gguf.load_params if is_gguf else hf.load_params
    return loader(source, setup.model_def, setup.param_shardings)


@dataclasses.dataclass
class Start:
    """A phase's starting point: the train state, the data position of its own checkpoint (None
    without one), where it came from (`checkpoint:<step>`, `export:<dir>`, `import:<path>`, `fresh`)."""

    state: State
    saved_position: dict[str, Any] | None
    source: str


def start_state(setup: Setup, ckpts: checkpoint.PhaseCheckpoints, workdir: Path, *, parent_is_reference: bool,
                value_from: str = "") -> Start:
    """The phase's train state in resume order (`checkpoint.resume`), with the parent export pinned
    (`checkpoint.pin_parent`) and its model checked against the config whenever its params are used:
    to start from, or as the reference (`parent_is_reference`). `value_from`: a separate value
    model's backbone (`backbone_with_fresh_head`)."""
    config = setup.config
    has_own = ckpts.latest_step() is not None
    parent_head = (checkpoint.export_metadata(config.init_from) or {}).get("model", {}).get("head", "lm") \
        if config.init_from else "lm"
    if parent_head == "scalar" and setup.model_def.cfg.head == "lm":
        raise ValueError(f"init_from={config.init_from!r} is a reward model's export (model.head='scalar'): a "
                         f"policy phase ({config.phase}) starts from a policy export, e.g. SFT's; a reward model "
                         "seeds a value model through online.value_from")
    new_head = bool(config.init_from) and new_heads(config.init_from, setup.model_def.cfg)
    if config.init_from and (parent_is_reference or not has_own):
        checkpoint.check_model_matches(config.init_from, dataclasses.asdict(setup.model_def.cfg),
                                       ignore=HEAD_FIELDS if new_head else ())
    checkpoint.pin_parent(workdir, config.init_from, resuming=has_own)
    imported = (lambda: import_params(setup, config.import_from)) if config.import_from else None
    state, saved, source = checkpoint.resume(
        ckpts, config.init_from, setup.abstract_state, fresh=lambda: setup.init_state(config.seed),
        with_params=setup.state_around, import_from=config.import_from, imported=imported,
        parent=(lambda: backbone_with_fresh_head(setup, config.init_from, value_from)) if new_head else None)
    return Start(state, saved, source)


def reference_params(setup: Setup, start: Start | None = None) -> Any:
    """The frozen reference's params, placed like the policy's: the parent export (`init_from`), else the
    imported checkpoint (`import_from`), else the fresh initial params (the log says which). With the
    phase's `start`, params it already holds are copied instead of loaded again."""
    config = setup.config
    if config.init_from:
        log.info("reference: frozen parent export %s", config.init_from)
        return checkpoint.load_params(config.init_from, setup.abstract_state["params"])
    if config.import_from:
        log.info("reference: frozen imported checkpoint %s", config.import_from)
        if start is not None and start.source.startswith("import:"):
            return jax.tree.map(jnp.copy, start.state["params"])
        return import_params(setup, config.import_from)
    log.warning("reference: no init_from; using the fresh initial params as the reference")
    if start is not None and start.source == "fresh":
        return jax.tree.map(jnp.copy, start.state["params"])
    return setup.init_params(config.seed)
