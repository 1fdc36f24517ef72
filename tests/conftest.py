import os

import pytest
from hypothesis import HealthCheck, settings

# "ci" (default): derandomised, so every run checks the same examples and CI cannot flake.
# "thorough": many more, random examples for local runs: pytest --hypothesis-profile=thorough
settings.register_profile(
    "ci", derandomize=True, max_examples=12, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", max_examples=300, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("SPEC_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def one_intra_op_thread():
    """Tiny test models gain nothing from threads, and oversubscribed cores slow them ~30x."""
    import torch

    torch.set_num_threads(1)
