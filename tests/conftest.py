import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


import pytest  # noqa: E402


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (restored afterwards): on a shared 2-core machine two competing OpenMP
    threads make small convolutions many times slower, and results do not depend on the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
