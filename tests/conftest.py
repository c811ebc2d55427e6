"""Fixtures and settings every test module shares (helpers to import live in tests/helpers.py).

The reference libraries are imported here, unconditionally: a run without
transformers or hypothesis fails at once instead of skipping the parity tests.
"""

import hypothesis
import pytest
import torch
import transformers  # noqa: F401  (the parity tests' reference; a missing one must fail the run)

# Derandomised: the same examples on every run and machine, so a red run reproduces and a green one stays green.
hypothesis.settings.register_profile("unimodel", derandomize=True, deadline=None, database=None, print_blob=True)
hypothesis.settings.load_profile("unimodel")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models gain nothing from a second (whose synchronisation is slow on a
    busy machine), and parity tests get the same float reductions on every machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
