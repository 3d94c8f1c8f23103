import pytest

from pjax.data import SyntheticConfig, build_task


@pytest.fixture(scope="session")
def sp_cache(tmp_path_factory):
    """One tokenizer cache dir shared by the data tests (training happens once)."""
    return str(tmp_path_factory.mktemp("pjax_cache"))


@pytest.fixture(scope="session")
def task(sp_cache):
    return build_task(SyntheticConfig(seed=0, cache_dir=sp_cache))
