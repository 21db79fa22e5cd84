import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread():
    """Tests are tiny: one CPU thread and a fixed seed keep them fast and reproducible."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
