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

# The end-to-end modules, longest first (as `make test --durations` measures them). `make test` hands
# whole modules to its two workers in collection order (--dist loadfile --no-loadscope-reorder): the
# long ones start first and the short unit-test modules fill in around them. xdist's default order,
# most tests first, started the longest modules (few tests each) last, on one worker, at the end.
LONGEST_FIRST = ("test_pipeline.py", "test_requests_pipeline.py", "test_distributed.py", "test_serve.py",
                 "test_init.py", "test_gpu_run.py", "test_bench_throughput.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items[:] = sorted(items, key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a module


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
