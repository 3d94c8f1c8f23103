"""Console logging for the command-line entry points."""

import logging


def configure(level: int = logging.INFO) -> None:
    """pjax's own messages at `level`; library chatter (Orbax per-save lines, JAX backend probing) only
    from WARNING up. Replaces any handler absl installed on the root logger."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for name in ("absl", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.WARNING)
