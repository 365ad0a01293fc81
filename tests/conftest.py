import sys
from pathlib import Path

import pytest
import torch

# The small models and tokenizers that tests in several folders build on live beside the tests they
# came from (generate/test_generate_common.py, train/test_train_helpers.py, align/align_tiny_run.py); make them importable
# from every folder, whatever order pytest collects the folders in.
_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE / "generate"), str(_HERE / "train"), str(_HERE / "align")]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # The test models are tiny: handing each small matmul to a second OpenMP thread costs more
    # than it saves, and far more when other jobs share the two cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
