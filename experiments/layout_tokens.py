"""Positions the model runs on per batch layout (`data.layout`), on a preference data set as training
encodes it: the FLOPs a padding-free layout saves are in these ratios.

    python -m experiments.layout_tokens --config=configs/dpo_tiny.py \
        --config.data.path=../shared/data/hh-rlhf/harmless-base-test.jsonl.gz \
        --config.data.tokenizer=../shared/data/tokenizers/llama2.model --config.data.chat_template=llama2 \
        --config.model.vocab_size=32000 --config.data.max_len=512 --config.data.bad_rows=skip \
        --config.train.batch_size=8

Every global batch of the seeded order over one epoch is laid out as training lays it out (one host).
"""

from __future__ import annotations

import json
import sys

from absl import app
from ml_collections import config_flags

from pjax.data import layout, load, loader

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config .py file.", lock_config=True)


def count(config) -> dict[str, dict[str, int]]:
    arrays = load.load_data(config).arrays
    B, T = config.train.batch_size, config.data.max_len
    totals = {lay: {"real": 0, "model": 0, "placed": 0} for lay in layout.LAYOUTS}
    for step in range(loader.num_rows(arrays) // B):
        batch = loader.global_batch({k: arrays[k] for k in ("tokens", "mask")}, step, B, config.seed)
        for lay, total in totals.items():
            for key, value in layout.token_counts(batch, lay, layout.row_length(lay, config.data.pack_len, T)).items():
                total[key] += value
    return totals


def main(argv) -> None:
    del argv
    totals = count(_CONFIG.value)
    padded = totals["padded"]["model"]
    for lay, t in totals.items():
        t["model_vs_padded"] = round(t["model"] / padded, 4)
    print(json.dumps(totals, indent=1))


if __name__ == "__main__":
    app.run(main, argv=sys.argv)
