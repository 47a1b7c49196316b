"""compose.yaml, compose.gpu.yaml, docker/: validated with `docker-compose config` (1.29) and/or
`docker compose config` (v2) where installed, plus static checks and the trainer script's logic
(no engine needed). The real stack runs in `make docker-smoke`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GPU = ["-f", "compose.yaml", "-f", "compose.gpu.yaml"]
CPU = ["-f", "compose.yaml"]


def compose_tools() -> list[list[str]]:
    tools = []
    if shutil.which("docker-compose"):
        tools.append(["docker-compose"])
    docker = shutil.which("docker")
    version = [docker, "compose", "version"] if docker else None
    if version and subprocess.run(version, capture_output=True, timeout=30).returncode == 0:
        tools.append([docker, "compose"])
    return tools


# Without either tool every compose test runs, and fails, on the missing one: it is a package this
# machine can have (tools/system_packages.sh installs it; `make test` runs that script first).
TOOLS = compose_tools() or [["docker-compose"]]


def config(tool: list[str], files: list[str], tmp_path: Path, **env: str) -> dict:
    """`config` output as a dict, with only the given XIAOPHI_* variables and no .env file."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("XIAOPHI_", "COMPOSE_"))}
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    if shutil.which(tool[0]) is None:
        pytest.fail(
            f"{tool[0]} is missing: `bash tools/system_packages.sh` installs it "
            "(`make test` runs it; Debian's docker-compose, no engine needed)"
        )
    result = subprocess.run(
        [*tool, "--env-file", str(empty_env), *files, "config"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def volume_targets(service: dict) -> dict[str, str]:
    """target -> source, from the short or long volume syntax `config` prints."""
    out = {}
    for v in service["volumes"]:
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v["source"], v["target"]
        out[target] = source
    return out


def env_of(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def published(service: dict) -> list[tuple[str, str, str]]:
    """(host ip, host port, container port) for each published port."""
    out = []
    for p in service["ports"]:
        if isinstance(p, str):
            *host, target = p.split(":")
            out.append((host[0], host[1], target.split("/")[0]))
        else:
            out.append((p.get("host_ip", ""), str(p["published"]), str(p["target"])))
    return out


@pytest.mark.parametrize(
    "tool", TOOLS, ids=lambda t: "docker-compose" if len(t) == 1 else "docker compose"
)
@pytest.mark.parametrize("files", [CPU, GPU], ids=["cpu", "gpu"])
def test_compose_config_validates(tool, files, tmp_path):
    cfg = config(tool, files, tmp_path)
    trainer, api = cfg["services"]["trainer"], cfg["services"]["api"]

    # The api waits for a successful trainer and has a healthcheck on /health.
    assert api["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert "/health" in " ".join(api["healthcheck"]["test"])
    assert trainer.get("restart", "no") == "no"
    assert trainer["command"] == ["sh", "/app/docker/trainer.sh"]

    # Published on 127.0.0.1 only, by default.
    assert published(api) == [("127.0.0.1", "8000", "8000")]
    assert "ports" not in trainer

    # Named volumes for checkpoints, knowledge bases, data and caches, shared by both services.
    for service in (trainer, api):
        assert volume_targets(service) == {
            "/models": "models",
            "/kb": "kb",
            "/data": "data",
            "/cache": "cache",
        }
    assert set(cfg["volumes"]) >= {"models", "kb", "data", "cache"}

    # Configuration through environment variables.
    assert env_of(api)["XIAOPHI_MODEL"] == "/models/tiny/dpo"
    assert env_of(api)["XIAOPHI_KB_EMBEDDING_MODEL"] == "/models/tiny/embedder"
    assert "XIAOPHI_API_KEYS" in env_of(api)
    assert env_of(api)["XIAOPHI_UI_DEFAULT_KB"] == "demo"  # the trainer fills the demo KB
    assert env_of(trainer)["XIAOPHI_MODEL"] == env_of(api)["XIAOPHI_MODEL"]

    for service in (trainer, api):
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
    gpu = files == GPU
    assert trainer["image"] == api["image"] == ("xiaophi:cuda" if gpu else "xiaophi:cpu")
    for service in (trainer, api):
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
        devices = devices.get("devices", [])
        args = service["build"].get("args") or {}
        if gpu:
            assert devices and devices[0]["driver"] == "nvidia"
            assert "gpu" in devices[0]["capabilities"]
            assert str(devices[0]["count"]) == "1"
            assert args["BASE_IMAGE"].startswith("nvidia/cuda:")
        else:
            assert not devices
            assert "BASE_IMAGE" not in args  # the Dockerfile's default (a public Python image)


@pytest.mark.parametrize("tool", TOOLS)
def test_compose_vllm_override(tool, tmp_path):
    """compose.vllm.yaml: vLLM on a GPU serves the checkpoint, the api generates through it."""
    cfg = config(tool, [*CPU, "-f", "compose.vllm.yaml"], tmp_path)
    vllm, api = cfg["services"]["vllm"], cfg["services"]["api"]
    env = env_of(api)
    assert env["XIAOPHI_ENGINE"] == "remote"
    assert env["XIAOPHI_REMOTE_BASE_URL"] == "http://vllm:8000/v1"
    assert env["XIAOPHI_MODEL"] == env_of(vllm)["XIAOPHI_MODEL"] == "/models/tiny/dpo"
    assert "--served-model-name xiaophi-upstream" in " ".join(vllm["command"])
    assert env["XIAOPHI_REMOTE_MODEL"] == "xiaophi-upstream"
    assert api["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert vllm["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert volume_targets(vllm)["/models"] == "models"
    assert "ports" not in vllm  # reached by the api inside the compose network only


@pytest.mark.parametrize("tool", TOOLS)
def test_compose_postgres_override(tool, tmp_path):
    """compose.postgres.yaml: a pgvector database that the trainer and the api wait for and
    keep every knowledge base in; its URL is the settings' own format."""
    from rag.config import KBSettings

    cfg = config(
        tool, [*CPU, "-f", "compose.postgres.yaml"], tmp_path, XIAOPHI_POSTGRES_PASSWORD="s3cret"
    )
    pg = cfg["services"]["postgres"]
    assert pg["image"].startswith("pgvector/pgvector:")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert volume_targets(pg) == {"/var/lib/postgresql": "pgdata"}
    assert "pgdata" in cfg["volumes"]
    assert "ports" not in pg  # reached inside the compose network only
    assert env_of(pg)["POSTGRES_PASSWORD"] == "s3cret"
    for name in ("trainer", "api"):
        service = cfg["services"][name]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        env = env_of(service)
        assert env["XIAOPHI_KB_BACKEND"] == "postgres"
        url = env["XIAOPHI_KB_DATABASE_URL"]
        assert url == "postgresql://xiaophi:s3cret@postgres:5432/xiaophi"
        kb = KBSettings(backend=env["XIAOPHI_KB_BACKEND"], database_url=url)
        assert kb.database_pool_size == int(env["XIAOPHI_KB_DATABASE_POOL_SIZE"]) == 10
    # the rest of the stack is unchanged
    assert cfg["services"]["api"]["depends_on"]["trainer"]["condition"] == (
        "service_completed_successfully"
    )
    assert env_of(cfg["services"]["api"])["XIAOPHI_MODEL"] == "/models/tiny/dpo"


@pytest.mark.parametrize("tool", TOOLS[:1])
def test_compose_own_model_and_settings(tool, tmp_path):
    """A host folder instead of the models volume, another bind address/port, API keys."""
    own = tmp_path / "my-models"
    cfg = config(
        tool,
        CPU,
        tmp_path,
        XIAOPHI_MODELS=str(own),
        XIAOPHI_DATA=str(tmp_path / "my-data"),
        XIAOPHI_MODEL="/models/mine",
        XIAOPHI_BIND_ADDRESS="0.0.0.0",
        XIAOPHI_HOST_PORT="9000",
        XIAOPHI_API_KEYS="k1,k2",
        XIAOPHI_MAX_RUNNING="4",
        XIAOPHI_ENGINE="remote",
        XIAOPHI_REMOTE_BASE_URL="http://gpu-box:8001/v1",
        XIAOPHI_REMOTE_MODEL="xiaophi-upstream",
        XIAOPHI_KB_EMBEDDING_URL="http://embedder:8000/v1",
    )
    api = cfg["services"]["api"]
    assert volume_targets(api)["/models"] == str(own)
    assert volume_targets(api)["/data"] == str(tmp_path / "my-data")
    assert volume_targets(api)["/kb"] == "kb"
    assert published(api) == [("0.0.0.0", "9000", "8000")]
    env = env_of(api)
    assert env["XIAOPHI_MODEL"] == "/models/mine"
    assert env["XIAOPHI_API_KEYS"] == "k1,k2"
    assert env["XIAOPHI_MAX_RUNNING"] == "4"
    assert env["XIAOPHI_ENGINE"] == "remote"
    assert env["XIAOPHI_REMOTE_BASE_URL"] == "http://gpu-box:8001/v1"
    assert env["XIAOPHI_REMOTE_MODEL"] == "xiaophi-upstream"
    assert env["XIAOPHI_KB_EMBEDDING_URL"] == "http://embedder:8000/v1"
    assert env_of(cfg["services"]["trainer"])["XIAOPHI_MODEL"] == "/models/mine"


def test_dockerfile_and_dockerignore():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines()]
    first_from = next(i for i, line in enumerate(lines) if line.startswith("FROM "))
    assert any(line.startswith("ARG BASE_IMAGE=") for line in lines[:first_from])
    assert all(line.startswith("FROM ${BASE_IMAGE}") for line in lines if line.startswith("FROM "))
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    # Buildable by the classic builder too (docker-compose 1.29 without BuildKit).
    assert not any(line.startswith("RUN --mount") for line in lines)
    assert not dockerfile.startswith("# syntax=")
    # Everything the Dockerfile copies from the context is kept by .dockerignore.
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"runs", "data", "kb", ".venv", ".git", ".env", "**/__pycache__"} <= ignored
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            source = line.split()[1]
            assert (ROOT / source).exists(), source
            assert source.split("/")[0].rstrip("/") not in ignored, source


def test_scripts_parse():
    for script, shell in [("trainer.sh", "sh"), ("smoke.sh", "bash")]:
        subprocess.run([shell, "-n", str(ROOT / "docker" / script)], check=True)


def fake_bin(tmp_path: Path) -> Path:
    """`xiaophi-demo` and `xiaophi-train` stand-ins that log their arguments and write a checkpoint."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    body = """#!/bin/sh
echo "$(basename "$0") $*" >> "$FAKE_LOG"
run=""
while [ $# -gt 0 ]; do
    case "$1" in --run|--out) run="$2"; shift ;; esac
    shift
done
mkdir -p "$run/dpo" && echo '{}' > "$run/dpo/config.json"
"""
    for name in ("xiaophi-demo", "xiaophi-train"):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_trainer(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    log = tmp_path / "calls.log"
    log.touch()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("XIAOPHI_")}
    path = f"{fake_bin(tmp_path)}:{clean['PATH']}"
    return subprocess.run(
        ["sh", str(ROOT / "docker" / "trainer.sh")],
        env={**clean, "PATH": path, "FAKE_LOG": str(log), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_trainer_skips_when_a_checkpoint_exists(tmp_path):
    model = tmp_path / "models" / "tiny" / "dpo"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    result = run_trainer(tmp_path, XIAOPHI_MODEL=str(model))
    assert result.returncode == 0, result.stderr
    assert "nothing to train" in result.stdout
    assert (tmp_path / "calls.log").read_text() == ""


def test_trainer_runs_the_demo_steps_without_a_checkpoint(tmp_path):
    model = tmp_path / "models" / "tiny" / "dpo"
    result = run_trainer(tmp_path, XIAOPHI_MODEL=str(model), XIAOPHI_KB_DIR=str(tmp_path / "kb"))
    assert result.returncode == 0, result.stderr
    call = (tmp_path / "calls.log").read_text().strip()
    assert call == (
        f"xiaophi-demo --no-serve --run {model.parent} --data /app/data/demo "
        f"--kb-dir {tmp_path / 'kb'}"
    )
    assert "done in" in result.stdout


def test_trainer_runs_own_pipeline_args(tmp_path):
    model = tmp_path / "models" / "mine" / "dpo"
    result = run_trainer(
        tmp_path,
        XIAOPHI_MODEL=str(model),
        XIAOPHI_TRAIN_ARGS="--recipe /data/my.yaml --pretrain.max_steps 5",
    )
    assert result.returncode == 0, result.stderr
    call = (tmp_path / "calls.log").read_text().strip()
    assert call == (
        f"xiaophi-train pipeline --out {model.parent} --recipe /data/my.yaml --pretrain.max_steps 5"
    )


def test_trainer_fails_when_the_run_leaves_no_checkpoint_where_expected(tmp_path):
    result = run_trainer(
        tmp_path,
        XIAOPHI_MODEL=str(tmp_path / "models" / "mine" / "final"),
        XIAOPHI_RUN_DIR=str(tmp_path / "models" / "mine"),
        XIAOPHI_TRAIN_ARGS="--recipe tiny",
    )
    assert result.returncode == 1
    assert "holds no checkpoint" in result.stderr
