from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # 2 shared cores: OpenMP threads spinning against other processes are far slower than one
    torch.set_num_threads(1)
