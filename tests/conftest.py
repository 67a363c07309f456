import shutil
import sys
from pathlib import Path

import pytest

# tests import helpers (golden.py, reference_models.py) as top-level modules
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A tiny llama HF checkpoint written once per module (never modified)."""
    from llmc.frontends import fixtures

    return fixtures.write_fixture(tmp_path_factory.mktemp("good") / "m", "llama", "hf-numpy")


@pytest.fixture
def model(good, tmp_path):
    """A private copy of `good` that a test may break."""
    return shutil.copytree(good, tmp_path / "m")
