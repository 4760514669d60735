"""Shared test set-up: no network, deterministic, small thread count."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("ZOO_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread: the models under test are tiny, so a second thread buys little, while on a busy machine
# two threads per process thrash (a training step was measured 20x slower); results do not depend on it.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test module starts at one thread again, whatever an earlier module's code (a training run with a
    ``threads`` setting, a benchmark helper) left behind."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
