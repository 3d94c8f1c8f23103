import pytest


@pytest.fixture(scope="session")
def sft_export(tmp_path_factory):
    """One tiny SFT run for every online test (the online phases start from its export, read-only)."""
    import pjax
    from configs import sft_tiny
    from tests.conftest import tiny

    root = tmp_path_factory.mktemp("rl")
    sft = tiny(sft_tiny.get_config(), root / "sft", root / "cache")
    pjax.train(sft)
    return sft
