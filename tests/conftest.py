import pytest
import torch


@pytest.fixture(autouse=True)
def _fixed_threads():
    # Results are compared bit for bit; keep the thread count fixed within the test session.
    torch.set_num_threads(1)
    yield
