import os

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "keras",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "keras"))


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts with the default float32 policy and a fixed seed."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"
