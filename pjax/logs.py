"""Console logging for the command-line entry points."""

import logging


def configure(level: int = logging.INFO, process_index: int = 0, process_count: int = 1) -> None:
    """pjax's own messages at `level`, library chatter (Orbax per-save lines, JAX backend probing and
    distributed start-up) only from WARNING up. Processes other than 0 of a multi-host run report only
    warnings and errors, tagged with their index. Replaces any handler absl installed on the root logger."""
    if process_index != 0:
        level = max(level, logging.WARNING)
    tag = f" [{process_index}]" if process_count > 1 else ""
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s", force=True)
    for name in ("absl", "jax._src.xla_bridge", "jax._src.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
