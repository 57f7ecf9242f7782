"""Test set-up: 8 virtual CPU devices, so every run exercises sharding."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The CLI keeps a persistent compilation cache by default; in-process CLI calls in the tests would
# switch it on for the whole worker. tests/test_compilation_cache.py turns it on where it is tested.
os.environ.setdefault("JAXALIGN_COMPILATION_CACHE", "off")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def devices():
    assert jax.device_count() == 8, "conftest must run before jax is imported"
    return jax.devices()
