"""The CLI: `python -m pjax.train --config=configs/<file>.py [--config.key=value ...]`.

Parse the config, validate it (errors name the key), start the processes, and run its phase through
the phase table (`pjax.phases.PHASES`): `pjax.train(config)` of the Python API (`pjax.api`), which this
is built on. Prints the export and the last logged metrics as JSON.
"""

from __future__ import annotations

import json
import sys
import types

import jax

from pjax import api, distributed, logs


def main(argv) -> None:
    del argv
    logs.configure()
    config = _CONFIG.value
    api.validate(config)
    distributed.initialize(config)  # before anything starts JAX's backend
    logs.configure(process_index=jax.process_index(), process_count=jax.process_count())
    summary = api.train(config)
    last = summary["history"][-1] if summary["history"] else {}
    if distributed.is_leader():
        print(json.dumps({"export": None if summary["preempted"] else summary["export"],
                          "preempted": summary["preempted"], "final": last}, indent=2))


class _CallableModule(types.ModuleType):
    """`pjax.train` is both this module and the API function `pjax.train(config)`: importing the module
    (which replaces the package attribute) keeps `pjax.train(config)` working."""

    def __call__(self, config):
        return api.train(config)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    from absl import app
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config .py file.", lock_config=True)
    app.run(main)
