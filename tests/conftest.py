from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# One thread for the whole session, as the package itself picks for these small models
# (casdap.engine.threads): faster here, and no OpenMP threads fighting other processes for cores.
torch.set_num_threads(1)


@pytest.fixture
def official_fixture():
    return FIXTURES / "casvit_official"
