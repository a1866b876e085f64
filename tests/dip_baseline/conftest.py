"""DIP tests run with one torch thread: tiny networks gain nothing from more, and the machine may be shared."""
import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every DIP test runs with one torch thread (see tests/conftest.py)."""
    yield
