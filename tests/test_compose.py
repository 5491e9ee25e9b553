"""Structure of the container deployment: docker-compose.yml and the Dockerfile.

No Docker engine is needed: the files are parsed and checked for what the deployment
guide (docs/deploy.md) promises, and every command the containers run is checked to
exist in the installed package (`hpo <subcommand> --help` must exit 0).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent

SERVICES = {"postgres", "migrate", "api", "worker", "dashboard"}
HEALTHY = "service_healthy"
COMPLETED = "service_completed_successfully"


# --------------------------------------------------------------------------- helpers


def load_compose() -> dict:
    with COMPOSE_FILE.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) pairs with comments dropped and continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments (and parser directives) may sit inside continuations
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def dockerfile_stages() -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2].lower() if len(words) >= 3 and words[1].upper() == "AS" else None
            current = Stage(name=name, base=words[0])
            if name:
                stages[name] = current
        elif current is not None:
            current.instructions.append((keyword, rest))
    return stages


def global_args() -> dict[str, str]:
    """ARG defaults declared before the first FROM (usable in FROM lines)."""
    values: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            values[key.strip()] = value.strip().strip("\"'")
    return values


def resolve_base(base: str) -> str:
    args = global_args()
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)


def stage_chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1].base.lower() in stages:
        chain.append(stages[chain[-1].base.lower()])
    return chain


def effective_user(stages: dict[str, Stage], name: str) -> str | None:
    for stage in stage_chain(stages, name):
        users = stage.args("USER")
        if users:
            return users[-1]
    return None


def effective_cmd(stages: dict[str, Stage], name: str) -> list[str]:
    for stage in stage_chain(stages, name):
        cmds = stage.args("CMD")
        if cmds:
            cmd = cmds[-1]
            return json.loads(cmd) if cmd.startswith("[") else shlex.split(cmd)
    raise AssertionError(f"stage {name!r} has no CMD")


def command_of(service: dict) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return list(command) if isinstance(command, list) else shlex.split(command)


def depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    assert isinstance(deps, dict), "depends_on must use the long form with conditions"
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def published_targets(service: dict) -> list[int]:
    targets = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            targets.append(int(port["target"]))
        else:
            targets.append(int(str(port).split("/")[0].rsplit(":", 1)[-1]))
    return targets


def environment(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict((item.split("=", 1) + [None])[:2] for item in env)
    return dict(env)


def subcommand_words(command: list[str]) -> list[str]:
    """["hpo", "token", "create", "--team", "x"] -> ["token", "create"]."""
    words = []
    for word in command[1:]:
        if word.startswith("-"):
            break
        words.append(word)
    return words


def container_commands() -> list[tuple[str, list[str]]]:
    """Every command a container of this deployment runs: compose commands and image CMDs."""
    found = [(f"compose:{name}", command_of(svc)) for name, svc in load_compose()["services"].items()]
    stages = dockerfile_stages()
    for name, stage in stages.items():
        if stage.args("CMD"):
            found.append((f"Dockerfile:{name}", effective_cmd(stages, name)))
    return [(origin, cmd) for origin, cmd in found if cmd and cmd[0] in {"hpo", "hpo-worker", "optuna-dashboard"}]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return dockerfile_stages()


# --------------------------------------------------------------------------- compose


def test_the_five_services_exist(services):
    assert set(services) == SERVICES


def test_postgres_has_healthcheck_volume_and_no_published_port(compose, services):
    pg = services["postgres"]
    assert str(pg["image"]).startswith("postgres:16")
    test = pg["healthcheck"]["test"]
    assert "pg_isready" in (" ".join(test) if isinstance(test, list) else test)
    assert "ports" not in pg, "PostgreSQL must not be published on the host by default"
    volumes = pg.get("volumes") or []
    data_volumes = [v for v in volumes if str(v).endswith(":/var/lib/postgresql/data")]
    assert data_volumes, "PostgreSQL data must live on a volume"
    volume_name = str(data_volumes[0]).split(":")[0]
    assert volume_name in (compose.get("volumes") or {}), "the data volume must be a named volume"


def test_migrate_runs_once_after_postgres_is_healthy(services):
    migrate = services["migrate"]
    assert migrate["build"]["target"] == "api"
    assert command_of(migrate) == ["hpo", "migrate"]
    assert migrate["restart"] == "no"  # the string, not YAML's boolean
    assert depends_on(migrate) == {"postgres": HEALTHY}


def test_api_waits_for_postgres_and_a_successful_migration(services):
    api = services["api"]
    assert api["build"]["target"] == "api"
    assert command_of(api) == ["hpo", "serve"]
    assert environment(api)["HPO_HOST"] == "0.0.0.0"
    assert 8000 in published_targets(api)
    deps = depends_on(api)
    assert deps["postgres"] == HEALTHY
    assert deps["migrate"] == COMPLETED


def test_worker_reserves_an_nvidia_gpu_and_can_be_scaled(services):
    worker = services["worker"]
    assert worker["build"]["target"] == "worker"
    assert command_of(worker) == ["hpo", "worker"]
    env = environment(worker)
    assert env["HPO_SERVER_URL"] == "http://api:8000"
    assert "HPO_DATABASE_URL" not in env, "workers talk to the API, never to the database"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpus, "the worker must reserve an NVIDIA GPU"
    assert gpus[0].get("count") in (1, "all")
    # `docker compose up --scale worker=N` fails on a fixed name or a fixed host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    deps = depends_on(worker)
    assert deps["api"] in (HEALTHY, "service_started")
    assert deps["migrate"] == COMPLETED


def test_dashboard_serves_the_same_database(services):
    dashboard = services["dashboard"]
    assert dashboard["build"]["target"] == "api"
    command = command_of(dashboard)
    assert command[0] == "optuna-dashboard"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "8080"
    assert 8080 in published_targets(dashboard)
    assert depends_on(dashboard)["migrate"] == COMPLETED


def test_only_the_api_port_is_published_by_default(services):
    """The API serves the dashboard itself at /dashboard, behind a login; the standalone
    optuna-dashboard (no login, every team's studies) starts only with its profile."""
    assert services["dashboard"].get("profiles") == ["standalone-dashboard"]
    default = {name for name, service in services.items() if not service.get("profiles")}
    assert default == SERVICES - {"dashboard"}
    published = {name for name in default if services[name].get("ports")}
    assert published == {"api"}
    # Even on request, the standalone dashboard binds to loopback unless told otherwise.
    assert str(services["dashboard"]["ports"][0]).startswith("${HPO_DASHBOARD_BIND:-127.0.0.1}:")


def test_migrate_api_and_dashboard_share_one_database_url(services):
    urls = {
        "migrate": environment(services["migrate"])["HPO_DATABASE_URL"],
        "api": environment(services["api"])["HPO_DATABASE_URL"],
        "dashboard": command_of(services["dashboard"])[1],
    }
    assert len(set(urls.values())) == 1, urls
    url = urls["api"]
    assert url.startswith("postgresql+psycopg://hpo:")
    assert url.endswith("@postgres:5432/hpo")
    pg_env = environment(services["postgres"])
    assert pg_env["POSTGRES_USER"] == "hpo" and pg_env["POSTGRES_DB"] == "hpo"


def test_secrets_are_required_variables_never_literals(services):
    raw = COMPOSE_FILE.read_text(encoding="utf-8")
    for var in ("POSTGRES_PASSWORD", "HPO_WORKER_TOKEN"):
        refs = re.findall(r"\$\{" + var + r"([^}]*)\}", raw)
        assert refs, f"{var} is not used"
        assert all(ref.startswith(":?") for ref in refs), f"every ${{{var}}} needs a :? guard"
    assert environment(services["postgres"])["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert environment(services["worker"])["HPO_TOKEN"].startswith("${HPO_WORKER_TOKEN:?")
    assert "${POSTGRES_PASSWORD:?" in environment(services["api"])["HPO_DATABASE_URL"]


def test_no_service_has_a_fixed_container_name(services):
    assert [name for name, svc in services.items() if "container_name" in svc] == []


# --------------------------------------------------------------------------- Dockerfile


def test_every_build_target_is_a_dockerfile_stage(services, stages):
    for name, svc in services.items():
        build = svc.get("build")
        if build is None:
            continue
        assert build.get("context", ".") in (".", "./")
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
        assert build["target"] in stages, f"{name}: no `FROM ... AS {build['target']}` stage"


def test_images_are_based_on_python_311_slim(stages):
    external = [resolve_base(s.base) for s in stages.values() if s.base.lower() not in stages]
    assert external and all(base == "python:3.11-slim" for base in external), external


def test_api_stage_has_no_torch_and_runs_unprivileged(stages):
    installs = " ".join(run for stage in stage_chain(stages, "api") for run in stage.args("RUN"))
    assert "pip install" in installs
    for forbidden in ("torch", "[worker]", "requirements-worker", "optional-dependencies"):
        assert forbidden not in installs, f"the api image must not install {forbidden}"
    user = effective_user(stages, "api")
    assert user is not None and user.split(":")[0] not in {"root", "0"}
    assert "8000" in " ".join(stages["api"].args("EXPOSE")).split()
    healthcheck = " ".join(stages["api"].args("HEALTHCHECK"))
    assert "urllib" in healthcheck and "/healthz" in healthcheck
    assert effective_cmd(stages, "api") == ["hpo", "serve"]


def test_worker_stage_installs_the_worker_extra_with_constraints(stages):
    installs = [run for stage in stage_chain(stages, "worker") for run in stage.args("RUN") if "pip install" in run]
    assert any("[worker]" in run and "-c constraints.txt" in run for run in installs), installs
    assert effective_cmd(stages, "worker") == ["hpo", "worker"]


# --------------------------------------------------------------------------- commands exist


COMMANDS = container_commands()


def test_commands_were_found():
    origins = {origin for origin, _ in COMMANDS}
    expected = {"compose:migrate", "compose:api", "compose:worker", "compose:dashboard"}
    assert expected <= origins
    assert {"Dockerfile:api", "Dockerfile:worker"} <= origins


@pytest.mark.parametrize(("origin", "command"), COMMANDS, ids=[origin for origin, _ in COMMANDS])
def test_container_command_exists_in_the_package(origin, command):
    script = BIN / command[0]
    assert script.exists(), f"{origin}: no {command[0]} script next to {sys.executable}"
    if command[0] == "optuna-dashboard":
        return  # a third-party script: existing is enough (its --help needs no storage)
    argv = [str(script), *subcommand_words(command), "--help"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, f"{origin}: {' '.join(argv)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
