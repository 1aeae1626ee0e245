"""deploy/ cannot run here (no Docker engine, no cluster), so its files are checked for what
would break first: they parse, every `crawlcoin` command and option they run exists, every
CRAWLCOIN_* variable they set is a real setting, and every file they build from exists."""

import re
import shlex
from pathlib import Path

import pytest
import typer.main
import yaml

from cli.embedded import LEAN_PREFECT_SERVER_ENV
from cli.main import app
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
# The Traefik variant for real deployments, and the HAProxy one that tests/deploy/test_ha_topology.py runs.
COMPOSE_FILES = [COMPOSE, DEPLOY / "ha" / "compose.yaml"]
# Read by prefect.yaml's pull step ("{{ $CRAWLCOIN_PROJECT_DIR }}"), not by Settings.
PREFECT_PROJECT_VARS = set(re.findall(r"\$(CRAWLCOIN_[A-Z_]+)", (ROOT / "prefect.yaml").read_text()))
SETTINGS_VARS = {f"CRAWLCOIN_{name.upper()}" for name in Settings.model_fields} | {"CRAWLCOIN_PREFECT_API_URL"}
YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def commands() -> list[tuple[str, list[str]]]:
    """Every command line the compose services and Kubernetes containers run."""
    found = []
    for path in COMPOSE_FILES:
        for name, service in documents(path)[0]["services"].items():
            if "command" in service:
                found.append((f"{path.relative_to(DEPLOY)} {name}", service["command"]))
    for path in DEPLOY.glob("k8s/*.yaml"):
        for doc in documents(path):
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                found.append((f"{path.name} {c['name']}", c.get("command", []) + c.get("args", [])))
    return found


def env_vars() -> list[tuple[str, str]]:
    names = []
    for path in COMPOSE_FILES:
        for name, service in documents(path)[0]["services"].items():
            for var in service.get("environment", {}):
                names.append((f"{path.relative_to(DEPLOY)} {name}", var))
    for path in DEPLOY.glob("k8s/*.yaml"):
        for doc in documents(path):
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                names += [(f"{path.name} {c['name']}", e["name"]) for e in c.get("env", [])]
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        names += [("Dockerfile", var) for var in re.findall(r"\b(CRAWLCOIN_[A-Z_]+)=", line)]
    for example in (DEPLOY / ".env.example", DEPLOY / "ha" / ".env.example"):
        names += [(str(example.relative_to(DEPLOY)), line.split("=", 1)[0]) for line in example.read_text().splitlines()
                  if "=" in line and not line.startswith("#")]
    return names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert documents(path)


def test_every_crawlcoin_command_exists() -> None:
    root = typer.main.get_command(app)
    checked = 0
    for where, argv in commands():
        if not argv or argv[0] != "crawlcoin":
            continue
        command = root
        args = list(argv[1:])
        while hasattr(command, "commands") and args and not args[0].startswith("-"):
            sub = args.pop(0)
            assert sub in command.commands, f"{where}: `crawlcoin … {sub}` is not a crawlcoin command"
            command = command.commands[sub]
        assert not hasattr(command, "commands"), f"{where}: {shlex.join(argv)} names no command"
        options = {o for p in command.params for o in getattr(p, "opts", [])}
        for arg in args:
            if arg.startswith("--"):
                assert arg.split("=", 1)[0] in options, f"{where}: {shlex.join(argv)}: no option {arg}"
        checked += 1
    assert checked >= 5, "the compose file runs the API, mining, results, worker and more"


def test_every_crawlcoin_variable_is_a_setting() -> None:
    unknown = [(where, var) for where, var in env_vars()
               if var.startswith("CRAWLCOIN_") and var not in SETTINGS_VARS | PREFECT_PROJECT_VARS]
    assert not unknown


def test_build_files_exist() -> None:
    compose = documents(COMPOSE)[0]
    builds = [s["build"] for s in compose["services"].values() if "build" in s]
    builds += [compose["x-crawlcoin"]["build"]]
    for build in builds:
        context = (COMPOSE.parent / build["context"]).resolve()
        assert (context / build["dockerfile"]).is_file()
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is missing"
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            src = volume.split(":", 1)[0]
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), f"compose {name} mounts {src}, which is missing"


def test_every_image_is_built_here_or_pinned() -> None:
    """Our image comes from deploy/Dockerfile; every other image names a version, never `latest`."""
    images = [(f"compose {n}", s["image"]) for n, s in documents(COMPOSE)[0]["services"].items() if "image" in s]
    for path in DEPLOY.glob("k8s/*.yaml"):
        for doc in documents(path):
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                images.append((path.name, c["image"]))
    ours = documents(COMPOSE)[0]["x-crawlcoin"]["image"]
    for where, image in images:
        assert image == ours or (":" in image and not image.endswith(":latest")), f"{where}: {image}"


def test_socketio_services_are_sticky_and_health_checked() -> None:
    services = documents(COMPOSE)[0]["services"]
    for name, port in (("mining", 8601), ("results", 8603)):
        labels = services[name]["labels"]
        assert f"traefik.http.services.{name}.loadbalancer.sticky.cookie=true" in labels
        assert f"traefik.http.services.{name}.loadbalancer.server.port={port}" in labels
        assert f"traefik.http.services.{name}.loadbalancer.healthcheck.path=/health" in labels
        assert services[name]["deploy"]["replicas"] >= 2 and "healthcheck" in services[name]
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert "postgresql" in services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]


def test_valkey_runs_as_primary_replica_and_three_sentinels_that_every_process_goes_through() -> None:
    from core.settings import parse_sentinel_url

    compose = documents(COMPOSE)[0]
    services = compose["services"]
    sentinels = sorted(n for n, s in services.items() if "--sentinel" in " ".join(s.get("command", [])))
    assert len(sentinels) >= 3, "three Sentinels: a majority survives losing one"
    assert services["valkey-replica"]["environment"]["REPLICAOF"] == "valkey-primary 6379"
    monitors = {re.search(r'"sentinel monitor (\S+) (\S+) (\d+) (\d+)"', " ".join(services[n]["command"])).groups()
                for n in sentinels}  # type: ignore[union-attr]
    [(name, host, port, quorum)] = monitors
    assert (host, port) == ("valkey-primary", "6379") and int(quorum) == len(sentinels) // 2 + 1
    url = compose["x-crawlcoin"]["environment"]["CRAWLCOIN_REDIS_URL"]
    assert re.search(r"^redis\+sentinel://:\$\{VALKEY_PASSWORD[^}]*\}@", url), "the password comes from .env"
    target = parse_sentinel_url(re.sub(r"\$\{VALKEY_PASSWORD[^}]*\}", "pw", url))  # as compose fills it in
    assert sorted(h for h, _ in target.sentinels) == sentinels and target.primary == name
    assert target.password == "pw"
    for n in ["valkey-primary", "valkey-replica", *sentinels]:
        command = " ".join(services[n]["command"])
        assert "requirepass $$VALKEY_PASSWORD" in command and "exec valkey-server" in command, n
    assert set(sentinels) <= set(compose["x-crawlcoin"]["depends_on"])
    assert "VALKEY_PASSWORD=" in (DEPLOY / ".env.example").read_text()


def test_every_prefect_server_runs_with_crawlcoin_up_s_lean_settings() -> None:
    """What `crawlcoin up` turns off in Prefect's server (measured: late-run marking alone was a fifth of its busy
    time in a burst) is off in the deploy files too, with the same values."""
    servers = 0
    for path in COMPOSE_FILES:
        for name, service in documents(path)[0]["services"].items():
            if service.get("command", [])[:2] != ["prefect", "server"]:
                continue
            servers += 1
            env = {k: str(v) for k, v in service.get("environment", {}).items()}
            differ = {k: (env.get(k), v) for k, v in LEAN_PREFECT_SERVER_ENV.items() if env.get(k) != v}
            assert not differ, f"{path.relative_to(DEPLOY)} {name}: (set, wanted) {differ}"
    assert servers >= 4, "the Traefik file's server, the HA file's two API servers, its services and its migration"
