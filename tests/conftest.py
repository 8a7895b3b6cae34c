"""Fixtures shared by the test modules that run whole stages in-process."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on a busy 2-core machine two threads make tiny steps much
    slower (they spin while other processes hold the cores). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
