"""Shared fixtures: paths to ../shared (golden vectors, Yelp) that skip cleanly when absent."""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REF = SHARED / "reference"
YELP = SHARED / "datasets"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def ref():
    """Return a loader for ../shared/reference/<name>.npz, skipping when it is absent."""
    if not REF.is_dir():
        pytest.skip("../shared/reference is not available")

    def load(name):
        path = REF / name
        if not path.exists():
            pytest.skip(f"{path} is not available")
        return np.load(path)

    return load


@pytest.fixture
def tiny_dir():
    """Directory holding the tiny reference split (trnMat/valMat/tstMat.pkl)."""
    path = REF / "tiny"
    if not path.is_dir():
        pytest.skip("../shared/reference/tiny is not available")
    return path
