"""Shared fixtures: real data from ../shared/data (or scikit-learn's digits), small trained models; for the
service and worker tests a real Redis, isolated settings and the demo model and data; for end-to-end tests
(worker/, gpu/) a real worker process on the test queue, the API in-process, and the demo uploaded once."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import torch
from fastapi.testclient import TestClient

from gif.data import Dataset, load_digits, load_mnist, shared_data_dir, split_indices
from gif.demo import write_demo_assets
from gif.models.registry import build_model
from gif.spec import RetrainSpec
from gif.training import reinitialised, train
from service.core.errors import PROBLEM_TYPE_PREFIX
from service.core.settings import Settings
from service.tools.launch import redis_for, worker_process
from service.tools.local_s3 import CREDENTIALS, local_s3, new_bucket
from service.web.app import create_app
from tests.support import SuiteClient


@pytest.fixture(scope="session")
def data_dir():
    path = shared_data_dir()
    assert (path / "mnist").is_dir(), f"the shared data is missing at {path} (set GIF_DATA_DIR)"
    return path


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="session")
def digits_double(digits) -> Dataset:
    return Dataset(digits.x.double(), digits.y)


@pytest.fixture(scope="session")
def tanh_mlp(digits_double):
    """A float64 tanh MLP (64→16→10, 1,210 parameters) trained for 10 epochs on the digits."""
    model = reinitialised(build_model({"name": "mlp", "config": {"sizes": [64, 16, 10], "activation": "tanh"}}), 0)
    model = model.double()
    return train(model, digits_double, RetrainSpec(epochs=10, batch_size=64, lr=0.05, weight_decay=0.0))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """For modules of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``): a second intra-op thread
    gains nothing there, and on a busy machine its spinning costs 20×."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mnist_split(data_dir):
    data = load_mnist(data_dir)
    train_idx, eval_idx = split_indices(len(data), 0.8, 0)
    return data.subset(train_idx), data.subset(eval_idx)


@pytest.fixture(scope="session")
def mnist_tinynet(mnist_split):
    """TinyNet trained for 3 epochs on 8,000 MNIST digits (about 95% held-out accuracy)."""
    train_data, _ = mnist_split
    model = reinitialised(build_model({"name": "tinynet", "config": {}}), 0)
    return train(model, train_data, RetrainSpec(epochs=3, batch_size=128, lr=0.05))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def dense_hessian_of(objective) -> torch.Tensor:
    """The exact p×p Hessian of a ``ModelObjective`` (tiny models only)."""
    space = objective.space
    theta = space.flatten(objective.params)

    def total(flat: torch.Tensor) -> torch.Tensor:
        params = space.unflatten(flat)
        return sum(objective.batch_loss(params, x, y, w) for x, y, w in objective.batches)

    return torch.autograd.functional.hessian(total, theta, vectorize=True)  # vmap over the rows: 3-4× the loop's speed


@pytest.fixture(scope="session")
def dense_hessian():
    return dense_hessian_of


CUDA_DOUBLE_DIR = Path(__file__).parent / "cuda_double"


@pytest.fixture
def cuda_double(tmp_path):
    """``torch.cuda`` replaced, in this process, by the double that keeps real hardware's rules
    (tests/cuda_double/gif_cuda_double.py); restored afterwards."""
    import sys

    sys.path.insert(0, str(CUDA_DOUBLE_DIR))
    try:
        from gif_cuda_double import CudaDouble
    finally:
        sys.path.remove(str(CUDA_DOUBLE_DIR))
    double = CudaDouble(tmp_path / "cuda-double").install()
    yield double
    double.uninstall()


@pytest.fixture
def cuda_double_env(tmp_path, monkeypatch):
    """``cuda_double_env(mode="")``: the environment under which the processes a test starts from now on (a worker and
    its job processes) see one GPU, the CUDA double in ``mode``; returns the double's state directory."""

    def arrange(mode: str = "") -> Path:
        state = tmp_path / "cuda-double"
        state.mkdir(exist_ok=True)
        monkeypatch.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [str(CUDA_DOUBLE_DIR), os.environ.get("PYTHONPATH")]))
        )
        monkeypatch.setenv("GIF_TEST_CUDA_DOUBLE", str(state))
        monkeypatch.setenv("GIF_TEST_CUDA_DOUBLE_MODE", mode)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
        return state

    return arrange


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """REDIS_URL when it answers, else a redis-server started for the session."""
    with redis_for(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[str]:
    """A real S3 endpoint on the loopback for the session: moto's server (in memory), test credentials in the
    environment (the worker processes the tests start inherit them)."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in CREDENTIALS.items():
            env.setenv(name, value)
        with local_s3("moto", tmp_path_factory.mktemp("moto")) as url:
            yield url


@pytest.fixture(scope="session")
def s3_bucket(s3_server):
    """``s3_bucket()``: the name of a new, empty bucket on the session's S3 server."""

    return lambda: new_bucket(s3_server)


@pytest.fixture(scope="session")
def isolated_settings(redis_url, tmp_path_factory, request):
    """``isolated_settings(**overrides)``: a context manager giving Settings under a fresh key prefix, queue
    and storage directory, whose Redis keys are removed afterwards (the Redis may be a shared one).

    With ``GIF_TEST_STORAGE=s3`` every such Settings stores its artifacts in a new bucket of the session's S3
    server instead of a local directory: the whole suite then runs against S3."""

    @contextmanager
    def make(**overrides) -> Iterator[Settings]:
        tag = f"test-{secrets.token_hex(4)}"
        if os.environ.get("GIF_TEST_STORAGE") == "s3" and "storage_url" not in overrides:
            endpoint = request.getfixturevalue("s3_server")
            overrides = {"storage_url": f"s3://{request.getfixturevalue('s3_bucket')()}/gif", **overrides}
            overrides.setdefault("s3_endpoint_url", endpoint)
        yield Settings(
            redis_url=redis_url,
            key_prefix=tag,
            queue_name=tag,
            storage_dir=tmp_path_factory.mktemp("artifacts"),
            **overrides,
        )
        client = redis.Redis.from_url(redis_url)
        for pattern in (f"{tag}:*", f"rq:*{tag}*"):
            for key in client.scan_iter(pattern):
                client.delete(key)

    return make


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> dict[str, Path]:
    """model, architecture, train, eval, job: the files of ``gif demo-assets`` (an MLP on the digits)."""
    return {p.stem: p for p in write_demo_assets(tmp_path_factory.mktemp("demo"))}


@pytest.fixture(scope="session")
def stack_settings(isolated_settings):
    """Short windows, so that lost jobs are found and cancels seen quickly; one attempt per job, so that a test that
    kills a job's process sees it fail (tests/worker/test_worker_retries.py runs jobs again)."""
    with isolated_settings(
        job_max_attempts=1,
        heartbeat_ttl_s=2.0,
        reaper_interval_s=0.5,
        progress_interval_s=0.1,
        cancel_check_interval_s=0.1,
        worker_torch_threads=1,
    ) as settings:
        yield settings


@pytest.fixture(scope="session")
def start_worker():
    """``start_worker(settings)``: a context manager running ``python -m worker`` with those settings."""
    return lambda settings: worker_process({**os.environ, **settings.as_env()})


@pytest.fixture(scope="session")
def worker(stack_settings, start_worker):
    """One worker process shared by every test on the default test queue."""
    with start_worker(stack_settings) as process:
        yield process


@pytest.fixture(scope="session")
def long_solve() -> dict:
    """A solver spec that runs for minutes unless the job is stopped."""
    return {"kind": "neumann", "tolerance": 1e-12, "max_iterations": 100000}


@pytest.fixture(scope="session")
def api(stack_settings, worker):
    """The API in-process on the worker's queue (its HTTP client is ``api.http``)."""
    with TestClient(create_app(stack_settings)) as http:
        yield SuiteClient(http=http)


@pytest.fixture(scope="session")
def inputs(api, demo) -> dict[str, str]:
    return api.upload_demo(demo["model"].parent)


def assert_problem(response, status: int, code: str) -> dict:
    """An RFC 9457 problem of this kind; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == PROBLEM_TYPE_PREFIX + code, body
    assert body["status"] == status and body["title"] and body["detail"]
    return body


@pytest.fixture(scope="session")
def problem():
    return assert_problem
