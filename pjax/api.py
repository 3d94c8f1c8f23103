"""The Python API (re-exported by `pjax`): configs, whole phases, their parts for a notebook, and exports.

Functional throughout: a `Run` owns the mesh and the rules (a context) and the jitted step, but no
train state; states are plain pytrees passed in and returned, exactly as the CLI (`pjax.train`,
which is built on this module) passes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from pathlib import Path
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from ml_collections import ConfigDict

from configs import base
from pjax import checkpoint, config_io, models, phases, sharding
from pjax import eval as evaluation
from pjax.core import init as core_init
from pjax.core import loop
from pjax.core.setup import State, make_setup, mesh_and_rules, validate_for_mesh
from pjax.data import batching, load, loader, tasks
from pjax.phases import offline
from pjax.rewards import RewardModel

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def config(path_or_name: str | ConfigDict, **overrides: Any) -> ConfigDict:
    """A validated run config: a config file's path (`configs/dpo_tiny.py`), the name of one in `configs/`
    (`"dpo_tiny"`), a run's workdir or `config.json` (its resolved config), or a ConfigDict; then
    `overrides` with `__` for nesting (`loss__beta=0.2`, `train__steps=10`). Unknown keys fail, naming the
    key, and the result passes the CLI's start-up checks."""
    if isinstance(path_or_name, ConfigDict):
        cfg = ConfigDict(path_or_name.to_dict())
    else:
        cfg = _load(str(path_or_name))
    for key, value in overrides.items():
        _override(cfg, key.replace("__", "."), value)
    if "phases" not in cfg:  # a pipeline config (`pjax.chain`) is checked phase by phase when it runs
        validate(cfg)
    return cfg


def _load(spec: str) -> ConfigDict:
    path = Path(spec).expanduser()
    if path.is_dir() or path.name == "config.json":
        return config_io.load_run_config(path)
    if path.suffix != ".py":
        path = CONFIGS / f"{spec}.py"
    if not path.exists():
        names = sorted(p.stem for p in CONFIGS.glob("*.py") if p.stem not in ("__init__", "base"))
        raise FileNotFoundError(f"config {spec!r}: no such file (the built-in configs: {names})")
    module_spec = importlib.util.spec_from_file_location(f"pjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config()


def _override(cfg: ConfigDict, dotted: str, value: Any) -> None:
    node, leaf = config_io.find_key(cfg, dotted)
    current = node[leaf]
    node[leaf] = tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value


@contextlib.contextmanager
def on_mesh(cfg: ConfigDict) -> Iterator[tuple[jax.sharding.Mesh, sharding.Rules]]:
    """`with pjax.on_mesh(cfg) as (mesh, rules):` the config's device mesh and rules table set, for work
    that is not a phase (evaluation, loading exports side by side)."""
    mesh, rules = mesh_and_rules(cfg)
    with jax.set_mesh(mesh), sharding.use_rules(rules):
        yield mesh, rules


def validate(cfg: ConfigDict) -> None:
    """The start-up checks of `cfg`'s phase, each error naming the key."""
    loop.validate(cfg, phases.spec(cfg))


def train(cfg: ConfigDict) -> dict[str, Any]:
    """Train (or resume) the phase of `cfg`: the CLI's `python -m pjax.train`. Returns its summary: the
    logged `history`, the `export` directory, the final `params`, `preempted`, the `source` it started
    from, the `heldout` figures (offline phases with held-out rows) and any `bad_rows` report."""
    return loop.run_phase(cfg, phases.spec(cfg))


class Run:
    """A phase's parts in a notebook: `with pjax.Run(cfg) as run:` sets its mesh and rules, then
    `run.init()`, `run.restore()` or `run.from_export(dir)` give a train state, `run.data()` the encoded
    rows, `run.batches(data)` the device batches in the CLI's order, `run.step(state, batch)` the CLI's
    jitted step (`run.reference()`: the frozen reference's params, for objectives that need one)."""

    def __init__(self, cfg: ConfigDict):
        validate(cfg)
        self.config, self.spec = cfg, phases.spec(cfg)
        self.mesh, self.rules = mesh_and_rules(cfg)
        self._entered: list[contextlib.ExitStack] = []
        with self:
            self.setup = make_setup(cfg, self.mesh, self.spec.optimizer_steps(cfg))
            validate_for_mesh(cfg, self.mesh, *self.spec.step_rows(cfg))
            self.train_step = self.spec.make_step(self.setup)  # `.jitted(...)` lowers it (benchmarks)

    def __enter__(self) -> "Run":
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(sharding.use_rules(self.rules))
        self._entered.append(stack)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._entered.pop().__exit__(*exc)

    @property
    def model_def(self) -> models.ModelDef:
        return self.setup.model_def

    def init(self, seed: int | None = None) -> State:
        """A fresh train state (`seed` defaults to the config's)."""
        return self.setup.init_state(self.config.seed if seed is None else seed)

    def restore(self, workdir: str | None = None) -> State:
        """The newest readable train state of the phase's own checkpoints (`workdir` defaults to the config's)."""
        ckpts = loop.phase_checkpoints(self.config, Path(workdir or self.config.workdir).expanduser())
        try:
            restored = ckpts.restore_latest_good(self.setup.abstract_state)
        finally:
            ckpts.close()
        if restored is None:
            raise FileNotFoundError(f"{ckpts.directory}: no checkpoint to restore")
        return restored[1]

    def from_export(self, export: str) -> State:
        """A fresh train state around an export's params (e.g. the parent phase's), checked against the model as
        the CLI checks its parent; where this model has heads the export lacks (a reward model from an SFT
        export), the export's backbone under fresh heads, as the CLI starts such a phase
        (`pjax.core.init.backbone_with_fresh_head`)."""
        cfg = self.model_def.cfg
        new_heads = core_init.new_heads(export, cfg)
        ignore = core_init.HEAD_FIELDS if new_heads else ()
        checkpoint.check_model_matches(export, dataclasses.asdict(cfg), ignore=ignore)
        if new_heads:
            value_from = self.config.online.value_from if self.config.phase == "online" else ""
            return self.setup.state_around(core_init.backbone_with_fresh_head(self.setup, export, value_from))
        return self.setup.state_around(checkpoint.load_params(export, self.setup.abstract_state["params"]))

    def reference(self) -> Any:
        """The frozen reference's params, as the CLI's (`pjax.core.init.reference_params`): the parent export
        (`init_from`), else the imported checkpoint (`import_from`), else the fresh initial params."""
        return core_init.reference_params(self.setup)

    def data(self) -> load.Data:
        """The phase's encoded rows (offline phases), as the CLI loads them."""
        return load.load_data(self.config)

    def batches(self, data: load.Data | dict[str, np.ndarray], start: int = 0) -> Iterator[dict[str, jax.Array]]:
        """Device batches of `train.batch_size` rows from step `start` on, in the CLI's seeded order and
        batch layout (`data.layout`), each host sending only its own rows."""
        arrays = data.arrays if isinstance(data, load.Data) else data
        bs = self.config.train.batch_size
        host = loader.HostBatches(arrays, batch_size=bs, seed=self.config.seed, rows=self.setup.local_rows(bs),
                                  state=loader.start_state(start))
        for local in host:
            yield offline.put_batch(self.setup, local)

    def step(self, state: State, batch: dict[str, jax.Array], ref_params: Any = None) -> tuple[State, dict]:
        """One optimizer step of the CLI's jitted train step; `state` is donated (use the returned one)."""
        return self.train_step(state, ref_params, batch)


class Model:
    """An exported policy: `sample(prompts)` completions, `logprobs(prompts, completions)` their summed
    log-probs. The tokenizer is the one the export's phase trained with (from its `config.json`)."""

    def __init__(self, export: str, tokenizer: Any = None, max_prompt_len: int | None = None):
        self.export = str(export)
        self.mesh, self.rules = _default_mesh()
        self.model_def, self.params, self.metadata = checkpoint.load_export(export, self.mesh, self.rules)
        run_config = _phase_config(export)
        self.tokenizer = tokenizer if tokenizer is not None else _tokenizer(run_config, export)
        self.max_prompt_len = max_prompt_len or (run_config.data.max_prompt_len if run_config else 64)
        self.max_len = run_config.data.max_len if run_config else self.model_def.cfg.max_seq_len

    def sample(self, prompts: Sequence[str], n: int = 1, temperature: float = 1.0, max_new_tokens: int = 32,
               top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list[list[str]]:
        """`n` completions of each prompt (a list per prompt)."""
        tok = self.tokenizer
        enc = batching.encode_prompts(tok, list(prompts), self.max_prompt_len)
        with jax.set_mesh(self.mesh), sharding.use_rules(self.rules):
            out = evaluation.sample(self.model_def, self.params, enc, seed=seed, max_new_tokens=max_new_tokens,
                                    eos_id=tuple(tok.stop_ids), pad_id=tok.pad_id, temperature=temperature,
                                    top_k=top_k, top_p=top_p, num_samples=n)
        texts = [tok.decode(c[:k]) for c, k in zip(out["completion"], out["lengths"])]
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    def logprobs(self, prompts: Sequence[str], completions: Sequence[str], temperature: float = 1.0) -> np.ndarray:
        """`[N]` summed log-probs of each completion after its prompt (TRL's convention)."""
        rows = batching.encode_sft(self.tokenizer, list(zip(prompts, completions)), self.max_len)
        with jax.set_mesh(self.mesh), sharding.use_rules(self.rules):
            lp = models.sequence_token_logprobs(self.model_def, self.params, rows["tokens"], rows["mask"],
                                                temperature=temperature)
        return np.asarray((np.asarray(lp) * rows["completion_mask"][:, 1:]).sum(-1), np.float64)


class RewardScorer:
    """Reward-model exports (several: an ensemble, aggregated as `reward.aggregate`): `score(texts)`."""

    def __init__(self, exports: Sequence[str], tokenizer: Any = None, normalize: bool = True,
                 aggregate: str = "mean"):
        self.mesh, self.rules = _default_mesh()
        self.rm = RewardModel.load(tuple(str(e) for e in exports), self.mesh, self.rules, normalize=normalize,
                                   aggregate=aggregate)
        run_config = _phase_config(exports[0])
        self.tokenizer = tokenizer if tokenizer is not None else _tokenizer(run_config, exports[0])
        self.max_len = run_config.data.max_len if run_config else self.rm.members[0].model_def.cfg.max_seq_len

    def score(self, texts: Sequence[str], completions: Sequence[str] | None = None) -> np.ndarray:
        """`[N]` rewards of whole texts, or of `completions` after the prompts `texts`."""
        if completions is None:
            completions, texts = list(texts), [""] * len(texts)
        rows = batching.encode_sft(self.tokenizer, list(zip(texts, completions)), self.max_len)
        with jax.set_mesh(self.mesh), sharding.use_rules(self.rules):
            return self.rm(rows["tokens"], rows["mask"])


def load_export(export: str, tokenizer: Any = None) -> Model:
    """An exported policy (`<workdir>/export`) with `sample` and `logprobs`."""
    return Model(export, tokenizer)


def load_reward_model(exports: str | Sequence[str], tokenizer: Any = None, normalize: bool = True,
                      aggregate: str = "mean") -> RewardScorer:
    """One reward-model export, or several as an ensemble, with `score(texts)`."""
    exports = (exports,) if isinstance(exports, (str, Path)) else tuple(exports)
    return RewardScorer(exports, tokenizer, normalize, aggregate)


def _default_mesh():
    """Every device on the `fsdp` axis, the default rules table."""
    return mesh_and_rules(base.get_config())


def _phase_config(export: str | Path) -> ConfigDict | None:
    path = Path(export).expanduser().resolve().parent / "config.json"
    return config_io.load_run_config(path) if path.exists() else None


def _tokenizer(run_config: ConfigDict | None, export: str | Path) -> Any:
    if run_config is None:
        raise ValueError(f"{export}: no config.json beside the export to find its tokenizer; pass tokenizer=")
    if run_config.data.tokenizer:
        return load.load_tokenizer(run_config)
    return tasks.build_task(run_config).tokenizer
