"""Test-wide settings: never reach a model hub, never send telemetry."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["MLFLOW_ENABLE_TELEMETRY"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one thread each,
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # for them and for every stage they launch


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one torch thread is faster, and much faster on a busy machine (no
    oversubscription). Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`;
    the setting is put back for the other modules."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (tests/pgserver.py): a callable that creates a fresh database on it and
    gives its URL. $RELEARN_TEST_POSTGRES names a server (a URL whose user may create databases);
    without it a throwaway server is started, or the test skips saying why."""
    from pgserver import Server

    try:
        server = Server.find()
    except RuntimeError as e:
        pytest.skip(f"no PostgreSQL server: {e}")
    try:
        yield server.new_database
    finally:
        server.stop()
