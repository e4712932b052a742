"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny-tensor tests: with 2 threads on a shared 2-core machine, OpenMP
    spin-waiting made the attentive probe 20-50x slower (0.4 s -> 10-30 s) whenever another process held a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
