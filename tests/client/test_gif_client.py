"""gif_client against the real stack (API in-process, a real worker): uploads, jobs, downloads, typed problems;
and ``gif submit|status|download`` on top of it."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys

import pytest
from gif_client import Client, IntegrityError, NotFoundError, ValidationFailed

from gif.cli import main


@pytest.fixture(scope="module")
def client(api) -> Client:
    return Client(http=api.http)  # FastAPI's TestClient is an httpx.Client


def test_the_client_and_its_commands_need_neither_torch_nor_the_engine_nor_the_service():
    heavy = "('torch', 'numpy', 'fastapi', 'gif', 'service')"
    probe = f"import sys, gif_client, gif_client.commands; print(sorted(m for m in {heavy} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_uploads_jobs_and_downloads(client, demo, tmp_path):
    architecture = json.loads(demo["architecture"].read_text())
    model = client.upload_model(demo["model"], architecture)
    assert client.upload_once("models", demo["model"], architecture)["id"] in {model["id"]} | {
        m["id"] for m in client.list("models") if m["sha256"] == model["sha256"]
    }
    train = client.upload_once("datasets", demo["train"])
    assert client.upload_once("datasets", demo["train"])["id"] == train["id"]  # reused, not sent again
    spec = {**json.loads(demo["job"].read_text()), "model_id": model["id"], "train_dataset_id": train["id"]}
    job = client.submit(spec, idempotency_key="client-test-1")
    assert client.submit(spec, idempotency_key="client-test-1")["id"] == job["id"]
    bar = io.StringIO()
    ended = client.wait(job["id"], progress=bar, poll_s=0.05)
    assert ended["status"] == "succeeded" and "succeeded" in bar.getvalue() and "%" in bar.getvalue()
    path = client.download(job["id"], tmp_path / "edited.safetensors")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ended["result"]["checkpoint"]["sha256"]
    assert job["id"] in {j["id"] for j in client.list("jobs", page_size=2)}
    assert any(a["name"] == "tinynet" for a in client.list("architectures", family="paper"))


def test_problems_are_typed_exceptions(client, demo):
    with pytest.raises(NotFoundError) as missing:
        client.job("job_" + "0" * 20)
    assert missing.value.code == "not-found" and missing.value.status == 404
    with pytest.raises(ValidationFailed) as invalid:
        client.submit({"model_id": "model_" + "0" * 20, "train_dataset_id": "dataset_" + "0" * 20,
                       "request": {"kind": "remove_class", "classes": [8]}})  # fmt: skip
    assert invalid.value.code == "unknown-reference"
    assert {e["pointer"] for e in invalid.value.errors} == {"/model_id", "/train_dataset_id"}


def test_a_download_that_does_not_match_its_etag_leaves_nothing(client, demo, tmp_path, monkeypatch):
    job = client.submit({**json.loads(demo["job"].read_text()), **client_inputs(client, demo)})
    client.wait(job["id"], progress=False)
    monkeypatch.setattr(hashlib, "sha256", lambda *a: hashlib.new("md5", *a))  # bytes that hash to another value
    with pytest.raises(IntegrityError):
        client.download(job["id"], tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists() and not (tmp_path / "bad.safetensors.part").exists()


def client_inputs(client: Client, demo) -> dict[str, str]:
    architecture = json.loads(demo["architecture"].read_text())
    return {
        "model_id": client.upload_once("models", demo["model"], architecture)["id"],
        "train_dataset_id": client.upload_once("datasets", demo["train"])["id"],
        "eval_dataset_id": client.upload_once("datasets", demo["eval"])["id"],
    }


def test_gif_submit_waits_prints_the_metrics_and_downloads(client, demo, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("gif_client.commands.remote_client", lambda args, host: Client(http=client.http))
    monkeypatch.setattr(Client, "close", lambda self: None)  # the shared test client stays open
    out = tmp_path / "edited.safetensors"
    argv = ["submit", "--server", "http://testserver", "--spec", str(demo["job"]), "--model", str(demo["model"]),
            "--architecture", str(demo["architecture"]), "--train-data", str(demo["train"]),
            "--eval-data", str(demo["eval"]), "--wait", "--out", str(out),
            "--report", str(tmp_path / "r.html")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "forget_test_accuracy" in printed.out and "edited checkpoint" in printed.out and out.exists()
    job_id = printed.err.split("job ", 1)[1].split()[0]
    assert job_id in (tmp_path / "r.html").read_text()
    assert main(["status", job_id, "--server", "http://testserver"]) == 0
    assert "succeeded" in capsys.readouterr().out
    assert main(["download", job_id, "--out", str(tmp_path / "again.safetensors"), "--server", "x"]) == 0
    assert (tmp_path / "again.safetensors").read_bytes() == out.read_bytes()
    assert main(["download", job_id, "--report", str(tmp_path / "again.html"), "--server", "x"]) == 0
    assert (tmp_path / "again.html").read_text() == (tmp_path / "r.html").read_text()
    assert main(["status", "job_" + "0" * 20, "--server", "x"]) == 2
    assert "404 not-found" in capsys.readouterr().err
    assert main(["workers", "--server", "x"]) == 0  # the suite's worker, healthy
    fleet = capsys.readouterr().out
    assert "  cpu (" in fleet and "jobs done: " in fleet
    assert main(["download", job_id, "--server", "x"]) == 2
    assert "nothing to download" in capsys.readouterr().err


def test_the_remote_commands_fail_in_one_line_without_a_server_or_a_connection(monkeypatch, capsys):
    """The commands come from the client's entry point; their errors reach ``gif`` as its own (exit status 2)."""
    monkeypatch.delenv("GIF_SERVER", raising=False)
    assert main(["status", "job_" + "0" * 20]) == 2
    assert capsys.readouterr().err.strip() == "gif: error: no server: give --server URL or set GIF_SERVER"
    assert main(["usage", "--server", "http://127.0.0.1:1"]) == 2  # nothing listens on port 1
    assert capsys.readouterr().err.startswith("gif: error: ")


def test_gif_submit_methods_asks_for_a_job_of_several_methods(demo, monkeypatch, capsys):
    submitted: list[dict] = []

    class Recorder:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def upload_once(self, collection, *args):
            return {"id": f"{collection}_1"}

        def submit(self, spec):
            submitted.append(spec)
            return {"id": "job_1", "status": "queued"}

    monkeypatch.setattr("gif_client.commands.remote_client", lambda args, host: Recorder())
    argv = ["submit", "--server", "x", "--spec", str(demo["job"]), "--model", str(demo["model"]),
            "--train-data", str(demo["train"]), "--methods", "gif, first_order,neg_grad_plus"]  # fmt: skip
    assert main(argv) == 0
    assert submitted[0]["methods"] == ["gif", "first_order", "neg_grad_plus"]
    assert capsys.readouterr().out.strip() == "job_1"
