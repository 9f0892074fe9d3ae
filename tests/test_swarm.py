"""The swarm stack (deploy/stack.yml, `scripts/deploy stack`) for real, on private Docker engines of this machine.

A cluster (tests/swarm.py) of three engines in network namespaces, with Debian's docker-registry on the hub. First
`scripts/deploy stack up` initialises a single-node swarm on node 1 and deploys there; after `stack down` node 1
leaves it and the three form a swarm of three managers. The project's images are built on the machine's engine
(unique tags, removed at the end), pushed to the cluster's registry, and every node pulls them from there. A client
loops through the proxy of node 1, from the hub, the whole time the three-node stack is changed:

- a version trained on node 2 and published to the model repository: after one reload, every replica serves it;
- a rolling update to a new image: start-first, one replica at a time;
- an update to an image whose API never becomes ready: rolled back by Swarm itself (`rollback_completed`);
- node 3 drained, then its engine, containerd and containers killed: its replicas run elsewhere;

and no request of the client fails. Marker `swarm`; needs root, iproute2, nsenter, Docker and docker-registry
(scripts/test-tools). Without them it skips, saying why; under CI=true it fails.

    uv run pytest -m swarm -p no:xdist
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from penguins.contract import EXAMPLE_PENGUIN
from tests import swarm
from tests.harness import free_port, stop_group
from tests.tiers import unavailable

pytestmark = [pytest.mark.swarm, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "scripts" / "deploy"
STACK = "penguins"
PORT = 3000
ALGORITHMS = ("random-forest", "logistic-regression")

_gaps = swarm.missing()
if not _gaps and subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
    _gaps = ["a Docker engine to build images with (../shared/docker/up)"]
if _gaps:
    unavailable(f"the swarm tests need {', '.join(_gaps)}", module=True)


def wait(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


class Images:
    """The stack's images built on the machine's engine under unique tags, pushed into the cluster's registry."""

    def __init__(self, cluster: swarm.Cluster, home: Path):
        self.cluster = cluster
        self.suffix = uuid.uuid4().hex[:8]
        self.local: list[str] = []
        self.home = home

    def tag(self, name: str) -> str:
        tag = f"penguins-{name}:swarm-{self.suffix}"
        self.local.append(tag)
        return tag

    def build(self) -> dict[str, str]:
        api, proxy, seaweedfs = self.tag("api"), self.tag("proxy"), self.tag("seaweedfs")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PENGUINS_")},
            "BENTOML_HOME": str(self.home / "bentoml"),
            "PENGUINS_API_IMAGE": api,
            "PENGUINS_PROXY_IMAGE": proxy,
            "PENGUINS_SEAWEEDFS_IMAGE": seaweedfs,
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        started = time.monotonic()
        swarm.run(str(DEPLOY), "stack", "build", "api", "proxy", "seaweedfs", cwd=ROOT, env=env, timeout=1800)
        # A new release (another image, same behaviour) and a broken one: it listens on another port than the one
        # its healthcheck and the proxy use, so it never becomes ready (alive all the same).
        newer = self.derived("newer", api, 'LABEL org.opencontainers.image.version="test-newer"')
        broken = self.derived("broken", api, "ENV PORT=3100")
        self.build_seconds = round(time.monotonic() - started, 1)
        started = time.monotonic()
        pushed = {
            name: self.cluster.push(image, image)
            for name, image in {
                "api": api,
                "newer": newer,
                "broken": broken,
                "proxy": proxy,
                "seaweedfs": seaweedfs,
            }.items()
        }
        self.push_seconds = round(time.monotonic() - started, 1)
        return pushed

    def derived(self, name: str, base: str, line: str) -> str:
        tag = self.tag(name)
        context = self.home / f"context-{name}"
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {base}\n{line}\n")
        swarm.run("docker", "build", "-q", "-t", tag, str(context), env={**os.environ, "DOCKER_BUILDKIT": "0"})
        return tag

    def remove(self) -> None:
        for tag in reversed(self.local):
            swarm.run("docker", "image", "rm", "--force", "--no-prune", tag, check=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[swarm.Cluster]:
    with swarm.cluster(nodes=3) as built:
        yield built


@pytest.fixture(scope="module")
def images(cluster, tmp_path_factory) -> Iterator[dict[str, str]]:
    built = Images(cluster, tmp_path_factory.mktemp("swarm-images"))
    try:
        names = built.build()
        names["build_seconds"], names["push_seconds"] = built.build_seconds, built.push_seconds
        names["local_api"] = built.local[0]  # the API image as bentoml containerize made it
        yield names
    finally:
        built.remove()


@pytest.fixture(scope="module")
def pulls(cluster, images) -> Iterator[list[subprocess.Popen]]:
    """Nodes 2 and 3 pull the images while node 1 runs the single-node stack (they join the swarm after it)."""
    started = []
    for node in cluster.nodes[1:]:
        command = " && ".join(f"docker pull -q {images[name]}" for name in ("api", "proxy"))  # not seaweedfs: node 1
        started.append(
            subprocess.Popen(
                ["sh", "-c", command],
                env={**os.environ, "DOCKER_HOST": node.host},
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    try:
        yield started
    finally:
        for process in started:
            stop_group(process, timeout=5)


def stack_env(images: dict[str, str], node: swarm.Node, secrets_dir: Path, **extra: str) -> dict[str, str]:
    # Nothing of the user's own settings, and every token given: scripts/deploy must not write the repository's .env.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PENGUINS_", "JUPYTER_", "COMPOSE_", "AWS_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return {
        **env,
        "DOCKER_HOST": node.host,
        "PENGUINS_API_IMAGE": images["api"],
        "PENGUINS_PROXY_IMAGE": images["proxy"],
        "PENGUINS_SEAWEEDFS_IMAGE": images["seaweedfs"],
        "PENGUINS_TRAIN_MODELS": json.dumps(ALGORITHMS),  # two of the five: the trainer's first run is quicker
        "PENGUINS_JUPYTER_IMAGE": "penguins-jupyter:not-deployed",
        "PENGUINS_JUPYTER_REPLICAS": "0",  # JupyterLab's image is not pushed: it adds minutes and tests nothing here
        "PENGUINS_ADMIN_TOKEN": f"admin-{uuid.uuid4().hex}",
        "JUPYTER_TOKEN": f"jupyter-{uuid.uuid4().hex}",
        "AWS_ACCESS_KEY_ID": f"key-{uuid.uuid4().hex[:12]}",
        "AWS_SECRET_ACCESS_KEY": f"secret-{uuid.uuid4().hex}",
        "PENGUINS_SECRETS_DIR": str(secrets_dir),
        "DEPLOY_READY_TIMEOUT": "600",
        **extra,
    }


def stack_up(cluster: swarm.Cluster, node: swarm.Node, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`scripts/deploy stack up --no-build` as a user on that node would run it (its loopback is the node's)."""
    return swarm.run(
        "nsenter", f"--net=/run/netns/{node.netns}", str(DEPLOY), "stack", "up", "--no-build",
        cwd=ROOT, env=env, timeout=900,
    )  # fmt: skip


def hub(cluster: swarm.Cluster, url: str, post: bool = False, token: str | None = None) -> dict:
    command = [sys.executable, str(ROOT / "tests" / "swarm_client.py"), "get", url]
    if post:
        command.append("--post")
    if token:
        command += ["--token", token]
    return json.loads(swarm.run(*cluster.in_hub(*command), timeout=60).stdout)


def service(node: swarm.Node, name: str) -> dict:
    return json.loads(node.docker("service", "inspect", f"{STACK}_{name}").stdout)[0]


def tasks(manager: swarm.Node, name: str) -> list[dict]:
    """The service's tasks meant to run, as Swarm inspects them."""
    ids = manager.docker("service", "ps", "-q", "--filter", "desired-state=running", f"{STACK}_{name}").stdout.split()
    return json.loads(manager.docker("inspect", "--type", "task", *ids).stdout) if ids else []


def task_nodes(manager: swarm.Node, name: str) -> list[str]:
    """Node ids of the service's running tasks (up and, with a healthcheck, healthy: Swarm reports a task running
    only once its container is healthy)."""
    return [task["NodeID"] for task in tasks(manager, name) if task["Status"]["State"] == "running"]


def served_by_every_replica(cluster: swarm.Cluster, nodes: list[swarm.Node], token: str | None = None) -> list[dict]:
    """Each API container on each node asked directly (inside it) which models it serves."""
    script = textwrap.dedent(
        """
        import json, urllib.request
        request = urllib.request.Request("http://127.0.0.1:3000/models", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        print(json.dumps(json.load(urllib.request.urlopen(request, timeout=20))))
        """
    )
    answers = []
    for node in nodes:
        for container in api_containers(node):
            listing = json.loads(node.docker("exec", container, "python", "-c", script).stdout)
            answers.append(
                {"node": node.name, "container": container, "tags": sorted(m["tag"] for m in listing["models"])}
            )
    return answers


class Client:
    """A client looping through one node's proxy from the hub, one JSON line per request."""

    def __init__(self, cluster: swarm.Cluster, url: str, out: Path):
        self.out = out
        command = cluster.in_hub(sys.executable, str(ROOT / "tests" / "swarm_client.py"), "loop", url, str(out))
        self.process = subprocess.Popen(command, start_new_session=True, stderr=subprocess.DEVNULL)

    def results(self, since: float = 0, until: float = float("inf")) -> list[dict]:
        if not self.out.exists():
            return []
        lines = [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]
        return [r for r in lines if since <= r["t"] <= until]

    def stop(self) -> None:
        stop_group(self.process, timeout=20)


def summary(results: list[dict]) -> dict:
    failed = [r for r in results if r["status"] != 200]
    return {"requests": len(results), "failed": len(failed), "examples": failed[:3]}


# --- single node: `scripts/deploy stack up` initialises the swarm -----------------------------------------------------


def test_stack_up_initialises_a_single_node_swarm_and_serves_through_the_proxy(
    cluster, images, pulls, tmp_path, figures
):
    node = cluster.nodes[0]
    assert node.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "inactive"
    # One replica: the three-node stack below runs three; here the machine's two cores do the others' work too.
    env = stack_env(images, node, tmp_path / "secrets", PENGUINS_API_REPLICAS="1")
    dotenv = ROOT / ".env"
    dotenv_before = dotenv.read_text() if dotenv.exists() else None
    started = time.monotonic()
    stack_up(cluster, node, env)
    assert (dotenv.read_text() if dotenv.exists() else None) == dotenv_before, "stack up wrote the repository's .env"
    ready_seconds = round(time.monotonic() - started, 1)
    assert node.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "active"

    # The README's curl, on the node itself, through the proxy.
    curl = swarm.run(
        "nsenter", f"--net=/run/netns/{node.netns}", "curl", "-sf", "-X", "POST",
        f"http://127.0.0.1:{PORT}/classify_random_forest", "-H", "Content-Type: application/json",
        "-d", json.dumps({"penguins": [EXAMPLE_PENGUIN]}),
    )  # fmt: skip
    [answer] = json.loads(curl.stdout)
    assert answer["species"] == "Gentoo" and answer["model"].startswith("penguins-random-forest:")

    # Published on loopback only, like the compose file: the swarm `stack up` made binds docker_gwbridge there.
    listening = swarm.run("nsenter", f"--net=/run/netns/{node.netns}", "ss", "-Htln").stdout
    addresses = {line.split()[3] for line in listening.splitlines()}
    assert f"127.0.0.1:{PORT}" in addresses and f"0.0.0.0:{PORT}" not in addresses and f"*:{PORT}" not in addresses
    assert hub(cluster, f"http://{node.ip}:{PORT}/readyz")["status"] == 0, "reachable from another host"

    # The replica healthy; the one-shot trainer ran once (trained into the repository, reloaded) and stopped.
    assert len(task_nodes(node, "api")) == 1

    def trainer_states() -> list[str]:
        ids = node.docker("service", "ps", "-q", f"{STACK}_trainer").stdout.split()
        return [t["Status"]["State"] for t in json.loads(node.docker("inspect", "--type", "task", *ids).stdout)]

    finished = {"complete", "failed", "rejected", "shutdown"}
    assert wait(lambda: set(states := trainer_states()) <= finished and states, 300, "the trainer", 3) == ["complete"]
    assert service(node, "trainer")["Spec"]["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"

    # The admin token is a secret file in the containers, not an environment value: reload without it is refused.
    spec = service(node, "api")["Spec"]["TaskTemplate"]["ContainerSpec"]
    for secret in ("PENGUINS_ADMIN_TOKEN", "AWS_SECRET_ACCESS_KEY"):
        assert not any(env[secret] in value for value in spec.get("Env", [])), secret
    assert sorted(s["File"]["Name"] for s in spec["Secrets"]) == ["penguins_admin_token", "s3_credentials"]
    reload = swarm.run(
        "nsenter", f"--net=/run/netns/{node.netns}", sys.executable, str(ROOT / "tests" / "swarm_client.py"), "get",
        f"http://127.0.0.1:{PORT}/reload", "--post",
    )  # fmt: skip
    assert json.loads(reload.stdout)["status"] == 401
    reload = swarm.run(
        "nsenter", f"--net=/run/netns/{node.netns}", sys.executable, str(ROOT / "tests" / "swarm_client.py"), "get",
        f"http://127.0.0.1:{PORT}/reload", "--post", "--token", env["PENGUINS_ADMIN_TOKEN"],
    )  # fmt: skip
    assert json.loads(reload.stdout)["status"] == 200

    swarm.run("nsenter", f"--net=/run/netns/{node.netns}", str(DEPLOY), "stack", "down", cwd=ROOT, env=env)
    assert node.docker("stack", "ls", "--format", "{{.Name}}").stdout.strip() == ""
    figures["swarm/single node stack up"] = {"seconds until ready through the proxy": ready_seconds}


# --- three nodes ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_nodes(cluster, images, pulls, tmp_path_factory) -> Iterator[dict]:
    for process in pulls:
        process.wait(timeout=900)
    first = cluster.nodes[0]
    if first.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() != "inactive":
        # The single-node test's swarm: left, and its loopback-only docker_gwbridge removed with it, so that this
        # node's proxy publishes on the node's address like the others'.
        wait(lambda: not first.docker("ps", "-q").stdout.strip(), 120, "the single-node stack's containers gone")
        first.docker("swarm", "leave", "--force")
        wait(
            lambda: (
                first.docker("network", "rm", "docker_gwbridge", check=False).returncode == 0
                or first.docker("network", "inspect", "docker_gwbridge", check=False).returncode != 0
            ),
            60,
            "docker_gwbridge removed",
        )
    cluster.swarm(cluster.nodes)
    manager = cluster.nodes[0]
    env = stack_env(images, manager, tmp_path_factory.mktemp("secrets"))
    started = time.monotonic()
    stack_up(cluster, manager, env)
    ready = round(time.monotonic() - started, 1)
    wait(lambda: len(task_nodes(manager, "api")) == 3, 600, "three healthy replicas", interval=2)
    client = Client(cluster, f"http://{manager.ip}:{PORT}", tmp_path_factory.mktemp("client") / "requests.jsonl")
    try:
        wait(lambda: client.results(), 60, "the client's first answer")
        yield {"env": env, "client": client, "manager": manager, "ready_seconds": ready}
    finally:
        client.stop()


def test_every_node_runs_a_replica_and_the_proxy_spreads_requests(cluster, three_nodes):
    manager = three_nodes["manager"]
    nodes = task_nodes(manager, "api")
    assert len(set(nodes)) == 3, "one replica per node"
    assert len(task_nodes(manager, "proxy")) == 3, "a proxy on every node (mode global)"
    # Every node's proxy answers, from the hub (the address another host would use).
    for node in cluster.nodes:
        assert hub(cluster, f"http://{node.ip}:{PORT}/readyz")["status"] == 200, node.name
    answers = served_by_every_replica(cluster, cluster.nodes)
    assert len(answers) == 3 and len({a["node"] for a in answers}) == 3
    assert all(len(a["tags"]) == len(ALGORITHMS) for a in answers)


def api_containers(node: swarm.Node) -> list[str]:
    return node.docker(
        "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={STACK}_api", "--filter", "health=healthy"
    ).stdout.split()


def test_a_version_trained_on_one_node_reaches_every_replica_after_one_reload(cluster, three_nodes, figures):
    manager, token = three_nodes["manager"], three_nodes["env"]["PENGUINS_ADMIN_TOKEN"]
    before = served_by_every_replica(cluster, cluster.nodes)
    assert len({tuple(a["tags"]) for a in before}) == 1, f"replicas disagree before: {before}"
    old = next(t for t in before[0]["tags"] if t.startswith("penguins-random-forest:"))
    # Trained on node 2, inside a replica there (its store, its repository settings): the version is published.
    trainer = cluster.nodes[1]
    [container, *_] = api_containers(trainer)
    trainer.docker(
        "exec", container, "python", "/home/bentoml/bento/src/train.py", "--models", "random-forest",
        "--seed", "7", "--no-gate", timeout=900,
    )  # fmt: skip
    started = time.monotonic()
    reload = hub(cluster, f"http://{manager.ip}:{PORT}/reload", post=True, token=token)
    assert reload["status"] == 200, reload

    def converged() -> list[dict] | None:
        answers = served_by_every_replica(cluster, cluster.nodes)
        tags = [{t for t in a["tags"] if t.startswith("penguins-random-forest:")} for a in answers]
        if len(answers) == 3 and all(len(t) == 1 for t in tags) and len(set.union(*tags)) == 1 and old not in tags[0]:
            return answers
        return None

    answers = wait(converged, 300, "every replica serving the new version", interval=1)
    seconds = round(time.monotonic() - started, 1)
    assert {a["node"] for a in answers} == {n.name for n in cluster.nodes}, "a replica on every node"
    figures["swarm/trained on one node, one reload"] = {"seconds until every replica serves it": seconds}


def test_a_rolling_update_and_an_automatic_rollback_lose_no_request(cluster, images, three_nodes, figures):
    manager, client = three_nodes["manager"], three_nodes["client"]
    api = f"{STACK}_api"

    def update(image: str, final: set[str], timeout: float) -> tuple[float, dict]:
        started = time.monotonic()
        manager.docker("service", "update", "--detach", "--image", image, api, timeout=300)
        status = wait(
            lambda: (s := service(manager, "api").get("UpdateStatus", {})).get("State") in final and s,
            timeout,
            f"update to {image}",
            interval=2,
        )
        return round(time.monotonic() - started, 1), status

    begin = time.time()
    rollout, status = update(images["newer"], {"completed", "paused", "rollback_completed", "rollback_paused"}, 600)
    assert status["State"] == "completed", status
    spec = service(manager, "api")["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    assert spec.startswith(images["newer"] + "@sha256:"), "pinned to the registry's digest"
    assert {t["Spec"]["ContainerSpec"]["Image"] for t in tasks(manager, "api")} == {spec}
    wait(lambda: len(task_nodes(manager, "api")) == 3, 120, "three healthy replicas after the update")

    rollback, status = update(images["broken"], {"completed", "paused", "rollback_completed", "rollback_paused"}, 600)
    assert status["State"] == "rollback_completed", status
    spec = service(manager, "api")["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    assert spec.startswith(images["newer"] + "@sha256:"), "rolled back to the version that served"
    wait(lambda: len(task_nodes(manager, "api")) == 3, 120, "three healthy replicas after the rollback")
    time.sleep(2)

    during = summary(client.results(since=begin))
    assert during["requests"] > 0 and during["failed"] == 0, during
    figures["swarm/rolling update and rollback"] = {
        "rollout to a new image s": rollout,
        "update to a never-ready image until rollback_completed s": rollback,
        "requests during both": during["requests"],
        "failed": during["failed"],
    }


def test_a_drained_then_killed_node_costs_the_client_nothing(cluster, three_nodes, figures):
    manager, client = three_nodes["manager"], three_nodes["client"]
    # The node to lose: one that runs a replica (updates may have moved them), not node 1 (the client's proxy).
    placed = task_nodes(manager, "api")
    lost = max(cluster.nodes[1:], key=lambda node: placed.count(node.id))
    assert placed.count(lost.id) >= 1, f"no replica outside node 1: {placed}"
    begin = time.time()
    started = time.monotonic()
    manager.docker("node", "update", "--availability", "drain", lost.id)
    wait(
        lambda: (nodes := task_nodes(manager, "api")) and len(nodes) == 3 and lost.id not in nodes,
        300,
        "the drained node's replica rescheduled",
        interval=2,
    )
    rescheduled = round(time.monotonic() - started, 1)
    cluster.kill_engine(lost)
    wait(
        lambda: manager.docker("node", "inspect", "-f", "{{.Status.State}}", lost.id).stdout.strip() == "down",
        120,
        "the managers to see the node down",
        interval=2,
    )
    down = round(time.monotonic() - started, 1)
    time.sleep(5)  # requests keep flowing with the node gone
    nodes = task_nodes(manager, "api")
    assert len(nodes) == 3 and lost.id not in nodes
    assert manager.docker("node", "ls").returncode == 0, "the two remaining managers keep a quorum"
    during = summary(client.results(since=begin))
    assert during["requests"] > 0 and during["failed"] == 0, during
    figures["swarm/node drained then killed"] = {
        "requests": during["requests"],
        "failed": during["failed"],
        "replica rescheduled after drain s": rescheduled,
        "node seen down s": down,
    }


def test_the_whole_run_lost_no_request(three_nodes, images, figures):
    results = three_nodes["client"].results()
    everything = summary(results)
    assert everything["failed"] == 0, everything
    figures["swarm/cluster"] = {
        "image build s": images["build_seconds"],
        "image push s": images["push_seconds"],
        "stack up until ready (3 nodes) s": three_nodes["ready_seconds"],
        "client requests in all": everything["requests"],
        "failed": everything["failed"],
    }


def test_nothing_is_left_behind_after_a_cluster_is_removed():
    """A cluster built and removed (and one that lost an engine mid-way) leaves no namespace, mount, cgroup,
    process or folder; a leftover of a crashed run is found and swept."""
    with swarm.cluster(nodes=1) as small:
        run_id, base = small.id, small.base
        small.nodes[0].docker("info")
        small.kill_engine(small.nodes[0])
    assert run_id not in swarm.leftovers()
    assert not swarm._mounts_under(base) and not swarm._pids_mentioning(str(base)) and not base.exists()
    # A crashed run: made by hand, its owner gone.
    crashed = swarm.Cluster(nodes=1)
    crashed.base.mkdir()
    (crashed.base / "owner").write_text("999999999")
    swarm.run("ip", "netns", "add", crashed.nodes[0].netns)
    assert crashed.id in swarm.leftovers()
    assert crashed.id in swarm.sweep()
    assert crashed.id not in swarm.leftovers()
    with contextlib.suppress(Exception):
        crashed.remove()


def test_the_k8s_pod_settings_run_on_the_api_image(images, tmp_path):
    """The chart's API container as `docker run` on the machine's engine: its user, read-only root filesystem, no
    capabilities, no privilege escalation, its emptyDir mounts as tmpfs, its environment and token file. It starts
    (live), is not ready on its empty store, and reload takes the token from the file."""
    from tests.test_k8s import HELM

    if shutil.which(HELM) is None:
        unavailable(f"needs helm ({HELM}; scripts/test-tools installs it)")
    import yaml

    rendered = subprocess.run(
        [HELM, "template", "penguins", str(ROOT / "deploy" / "k8s")], capture_output=True, text=True, check=True
    ).stdout
    [deployment] = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [api] = pod["containers"]
    security, user = api["securityContext"], pod["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
    token = f"k8s-{uuid.uuid4().hex}"
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "token").chmod(0o444)
    port = free_port()
    command = [
        "docker", "run", "-d", "--rm", "--read-only", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--user", f"{user['runAsUser']}:{user['runAsGroup']}",
        "-p", f"127.0.0.1:{port}:3000",
        "-v", f"{tmp_path / 'token'}:/run/secrets/penguins/token:ro",
    ]  # fmt: skip
    for mount in api["volumeMounts"]:
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        if "emptyDir" in volume:
            command += ["--tmpfs", f"{mount['mountPath']}:uid={user['runAsUser']},gid={user['runAsGroup']}"]
    for variable in api["env"]:
        command += ["-e", f"{variable['name']}={variable['value']}"]
    local = images["local_api"]
    container = swarm.run(*command, local, timeout=120).stdout.strip()
    try:
        url = f"http://127.0.0.1:{port}"
        wait(lambda: _status(f"{url}/livez") == 200, 240, "the pod's /livez")
        assert _status(f"{url}/readyz") == 503  # its store (an emptyDir) is empty
        assert _status(f"{url}/reload", post=True) == 401
        assert _status(f"{url}/reload", post=True, token=token) == 200
    finally:
        swarm.run("docker", "rm", "-f", container, check=False)


def _status(url: str, post: bool = False, token: str | None = None) -> int:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = httpx.request("POST" if post else "GET", url, headers=headers, json={} if post else None, timeout=10)
    except httpx.HTTPError:
        return 0
    return answer.status_code
