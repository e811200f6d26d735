import torch


def pytest_configure(config):
    # Runs are compared bit for bit, and CPU reductions depend on the thread count: pin it once,
    # before any fixture (of any scope) trains anything.
    torch.set_num_threads(1)
