"""Start-up checks of the config sections every phase shares; each error names the offending key.
(Each phase adds its own: `pjax.phases.offline`, `pjax.rl.config`.)"""

from __future__ import annotations

import math
from pathlib import Path

from ml_collections import ConfigDict

from pjax import config_io, losses, sharding
from pjax.data import tasks
from pjax.metrics import validate_logging
from pjax.models.config import model_config


def validate_common(config: ConfigDict) -> None:
    """The checks every phase shares (training, optimizer, logging, data, paths, model), naming the key."""
    for key in ("steps", "batch_size", "log_every", "save_every", "logprob_chunk", "keep_checkpoints", "grad_accum"):
        if config.train[key] <= 0:
            raise ValueError(f"train.{key}={config.train[key]} must be positive")
    for key, value in (("loss.beta", config.loss.beta), ("optim.lr", config.optim.lr),
                       ("generate.max_new_tokens", config.generate.max_new_tokens)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{key}={value} must be a finite positive number")
    o = config.optim
    for key in ("weight_decay", "eps", "grad_clip", "min_lr_ratio"):
        if not math.isfinite(o[key]) or o[key] < 0:
            raise ValueError(f"optim.{key}={o[key]} must be a finite number >= 0")
    for key in ("b1", "b2"):
        if not 0.0 <= o[key] < 1.0:
            raise ValueError(f"optim.{key}={o[key]} must lie in [0, 1)")
    for key in config.train.resume_changes:  # keys a resumed run may change: they must exist
        try:
            config_io.find_key(config, str(key))
        except KeyError as e:
            raise ValueError(f"train.resume_changes: {e.args[0]}") from None
    for key in ("max_update_ratio", "grad_spike"):
        if not math.isfinite(config.train[key]) or config.train[key] < 0:
            raise ValueError(f"train.{key}={config.train[key]} must be a finite number >= 0 (0 = off)")
    if config.train.keep_every < 0:
        raise ValueError(f"train.keep_every={config.train.keep_every} must be >= 0 (0 = keep only the latest)")
    if config.train.keep_every % config.train.save_every:
        raise ValueError(f"train.keep_every={config.train.keep_every} must be a multiple of "
                         f"train.save_every={config.train.save_every} (it keeps the saved steps divisible by it)")
    sharding.config_rules(config.sharding)  # raises with the key named
    validate_logging(config)  # logging.*: W&B enabled but not installed fails here
    if config.optim.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps={config.optim.warmup_steps} must be >= 0")
    for key in ("workdir", "init_from", "import_from"):
        if "://" in str(config[key]):
            raise ValueError(f"{key}={config[key]!r}: object-store URLs are not supported (pjax appends to files, "
                             "renames them atomically, and multi-host checkpoints need one filesystem every host "
                             "sees); mount the bucket (e.g. gcsfuse, see tpu/README.md) and pass the mounted path")
    if config.reward.aggregate not in losses.AGGREGATIONS:
        raise ValueError(f"reward.aggregate={config.reward.aggregate!r}: expected one of {losses.AGGREGATIONS}")
    if config.reward.stats_rows <= 0:
        raise ValueError(f"reward.stats_rows={config.reward.stats_rows} must be positive")
    if config.data.task not in tasks.TASKS:
        raise ValueError(f"data.task={config.data.task!r}: the built-in tasks are {tasks.TASKS} (real data: data.path)")
    if config.data.bad_rows not in ("fail", "skip"):
        raise ValueError(f"data.bad_rows={config.data.bad_rows!r}: expected 'fail' or 'skip'")
    for key in ("num_heldout", "max_prompt_tokens"):
        if config.data[key] < 0:
            raise ValueError(f"data.{key}={config.data[key]} must be >= 0")
    if config.data.num_heldout and not config.data.path:
        raise ValueError(f"data.num_heldout={config.data.num_heldout} holds rows of data.path out, which is not set "
                         "(the synthetic task's held-out split is data.num_heldout_pairs)")
    if config.data.path and not config.data.tokenizer and config.data.chat_template:
        raise ValueError("data.chat_template is set but data.tokenizer is not: name the tokenizer the template is for")
    if config.init_from and config.import_from:
        raise ValueError(f"init_from={config.init_from!r} and import_from={config.import_from!r} are both set: a "
                         "phase starts from a parent export or from an imported checkpoint; clear one")
    for key, value in (("import_from", config.import_from), ("data.tokenizer", config.data.tokenizer),
                       ("data.path", config.data.path)):
        if value and not value.startswith(("tfds:", "hf:")) and not Path(value).expanduser().exists():
            raise FileNotFoundError(f"{key}={value!r}: no such file or directory")
    cfg = model_config(config)  # raises with the key named
    if config.data.max_len > cfg.max_seq_len:
        raise ValueError(f"data.max_len={config.data.max_len} exceeds model.max_seq_len={cfg.max_seq_len}")
