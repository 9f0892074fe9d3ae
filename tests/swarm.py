"""A Docker Swarm of private Docker engines on this machine, for the swarm tests (tests/test_swarm.py).

Each node is a `dockerd` of its own (data root, exec root, unix socket, cgroup parent, no default bridge) in a network
namespace of its own, joined by veth pairs to a bridge in a hub namespace; Debian's `docker-registry` serves the
cluster's images from the hub's address. The machine's own engine is only used to build images, which are pushed to
the same registry through a second registry process on a loopback port (both read and write one storage folder):
the machine's engine never learns of the private engines, and nothing here touches its swarm state.

Everything one cluster makes carries its run id: the folder /tmp/psw-<id> (a tmpfs; a short path: unix sockets have a
length limit),
the namespaces psw-<id>-*, the cgroups /psw-<id>-* of its containers. `Cluster.remove` takes all of it down and
tolerates half-made state; `sweep` removes what a crashed earlier run left (its owner process is gone).

Needs root, iproute2 (`ip netns`), nsenter, dockerd and the docker-registry binary (.ci/run and
scripts/test-tools install them); `missing()` says what is absent.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.harness import free_port

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "psw-"
TMP = Path("/tmp")
CGROUP = Path("/sys/fs/cgroup")
# The nodes' private subnet exists only inside the namespaces made here (192.168.213.0/24 is never routed out).
SUBNET = "192.168.213"
HUB_IP = f"{SUBNET}.1"
REGISTRY = f"{HUB_IP}:5000"
TOOLS = Path(os.environ.get("PENGUINS_TOOLS_DIR", "/var/cache/penguins-tools"))
TMPFS_SIZE = "16g"  # an upper bound: three nodes holding the API image use about 3 GB
# The registry's storage outlives a run, like Docker's build cache: pushing an unchanged 1.4 GB API image again then
# takes seconds instead of minutes (Docker skips layers the registry has). Emptied when it grows past the cap.
REGISTRY_CACHE = Path(os.environ.get("PENGUINS_SWARM_REGISTRY_CACHE", "/var/cache/penguins-swarm/registry"))
REGISTRY_CACHE_CAP = 10 * 1024**3
PUSH_PORT = int(os.environ.get("PENGUINS_SWARM_PUSH_PORT", "35213"))


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def registry_cache() -> Path:
    if REGISTRY_CACHE.is_dir():
        size = sum(f.stat().st_size for f in REGISTRY_CACHE.rglob("*") if f.is_file())
        if size > REGISTRY_CACHE_CAP:
            shutil.rmtree(REGISTRY_CACHE, ignore_errors=True)
    REGISTRY_CACHE.mkdir(parents=True, exist_ok=True, mode=0o700)
    return REGISTRY_CACHE


def registry_binary() -> Path | None:
    for candidate in (TOOLS / "docker-registry" / "usr" / "bin" / "docker-registry", Path("/usr/bin/docker-registry")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing() -> list[str]:
    """What this machine lacks to build a cluster (empty when it can)."""
    gaps = []
    if os.geteuid() != 0:
        gaps.append("root (network namespaces, private Docker engines)")
    for tool in ("ip", "nsenter", "dockerd", "docker"):
        if shutil.which(tool) is None:
            gaps.append(tool)
    if registry_binary() is None:
        gaps.append("docker-registry (scripts/test-tools installs it)")
    return gaps


def run(*command: str, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()[-3000:]}")
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Node:
    name: str  # n1, n2, ...
    ip: str
    netns: str
    home: Path
    process: subprocess.Popen | None = None
    id: str = ""  # the swarm's node id, once joined

    @property
    def socket(self) -> Path:
        return self.home / "d.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def docker(self, *args: str, timeout: float = 180, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        env = {**os.environ, "DOCKER_HOST": self.host}
        env.pop("DOCKER_CONTEXT", None)
        return run("docker", *args, timeout=timeout, check=check, env=env, **kwargs)

    def dockerd_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.home / "d.pid").read_text())
        return None


class Cluster:
    """Three (or more) private engines in namespaces, a registry on the hub, optionally a swarm over them."""

    def __init__(self, nodes: int = 3):
        self.id = secrets.token_hex(3)
        self.base = TMP / f"{PREFIX}{self.id}"
        self.hub = f"{PREFIX}{self.id}-hub"
        self.nodes = [
            Node(f"n{i}", f"{SUBNET}.{10 + i}", f"{PREFIX}{self.id}-n{i}", self.base / f"n{i}")
            for i in range(1, nodes + 1)
        ]
        self.registry_processes: list[subprocess.Popen] = []
        self.push_port = 0
        self.pushed: list[str] = []  # tags made on the machine's engine, removed at the end

    # --- building ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        sweep()
        self.base.mkdir(mode=0o700)
        # Everything the engines and the registry write goes to memory: removing gigabytes of image layers from this
        # machine's disk (ext4 with online discard) took minutes; a tmpfs goes at once.
        run("mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", f"{PREFIX}{self.id}", str(self.base))
        (self.base / "owner").write_text(str(os.getpid()))
        ip = ["ip", "-n", self.hub]
        run("ip", "netns", "add", self.hub)
        run(*ip, "link", "set", "lo", "up")
        run(*ip, "link", "add", "br0", "type", "bridge")
        run(*ip, "addr", "add", f"{HUB_IP}/24", "dev", "br0")
        run(*ip, "link", "set", "br0", "up")
        for node in self.nodes:
            self._add_namespace(node)
        self._start_registry()
        for node in self.nodes:
            self._start_engine(node)
        for node in self.nodes:
            self._wait_engine(node)

    def _add_namespace(self, node: Node) -> None:
        run("ip", "netns", "add", node.netns)
        veth = f"v{node.name}"
        # Both ends are made inside our namespaces: the machine's own namespace never sees an interface of ours.
        run("ip", "-n", self.hub, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", node.netns)
        run("ip", "-n", self.hub, "link", "set", veth, "master", "br0", "up")
        for command in (
            ["link", "set", "lo", "up"],
            ["addr", "add", f"{node.ip}/24", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["route", "add", "default", "via", HUB_IP],
        ):
            run("ip", "-n", node.netns, *command)

    def _start_registry(self) -> None:
        binary = registry_binary()
        assert binary is not None, "docker-registry is not installed"
        storage = registry_cache()
        # One port from run to run: Docker remembers which layers a registry (by host:port) has and skips them.
        self.push_port = PUSH_PORT if _port_free(PUSH_PORT) else free_port()
        for name, address, netns in (("hub", REGISTRY, self.hub), ("push", f"127.0.0.1:{self.push_port}", None)):
            config = self.base / f"registry-{name}.yml"
            # No blob-descriptor cache: two processes share the storage, each must see what the other wrote.
            config.write_text(
                json.dumps(
                    {
                        "version": 0.1,
                        "log": {"level": "warn"},
                        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
                        "http": {"addr": address},
                    }
                )
            )
            command = [str(binary), "serve", str(config)]  # the config path (in the run's folder) names the run
            if netns:
                command = ["nsenter", f"--net=/run/netns/{netns}", *command]
            with (self.base / f"registry-{name}.log").open("w") as log:
                self.registry_processes.append(
                    subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                )
        deadline = time.monotonic() + 30
        while run("curl", "-sf", f"http://127.0.0.1:{self.push_port}/v2/", check=False).returncode != 0:
            assert time.monotonic() < deadline, (self.base / "registry-push.log").read_text()
            time.sleep(0.3)

    def _start_engine(self, node: Node) -> None:
        node.home.mkdir()
        # `ip netns exec` would also remount /sys and dockerd then fails ("Devices cgroup isn't mounted"); nsenter
        # changes the network namespace only.
        command = [
            "nsenter", f"--net=/run/netns/{node.netns}",
            "dockerd",
            "--data-root", str(node.home / "data"),
            "--exec-root", str(node.home / "x"),
            "--pidfile", str(node.home / "d.pid"),
            "-H", node.host,
            "--bridge=none",
            "--storage-driver", "overlay2",
            "--insecure-registry", REGISTRY,
            "--cgroup-parent", f"/{PREFIX}{self.id}-{node.name}",
            "--log-level", "warn",
        ]  # fmt: skip
        with (node.home / "dockerd.log").open("w") as log:
            node.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def _wait_engine(self, node: Node, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while node.docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=20).returncode != 0:
            if node.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd {node.name} did not start:\n{(node.home / 'dockerd.log').read_text()}")
            time.sleep(0.5)

    def swarm(self, nodes: list[Node], managers: int = 3) -> None:
        """One swarm over `nodes`: the first initialises it, the next managers-1 join as managers, the rest as
        workers. Every node's hostname is the machine's: the node label `penguins.node` tells them apart."""
        first = nodes[0]
        first.docker("swarm", "init", "--advertise-addr", first.ip)
        tokens = {
            role: first.docker("swarm", "join-token", "-q", role).stdout.strip() for role in ("manager", "worker")
        }
        for index, node in enumerate(nodes[1:], start=1):
            role = "manager" if index < managers else "worker"
            node.docker("swarm", "join", "--advertise-addr", node.ip, "--token", tokens[role], f"{first.ip}:2377")
        for node in nodes:
            node.id = node.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
            first.docker("node", "update", "--label-add", f"penguins.node={node.name}", node.id)

    def push(self, image: str, name: str) -> str:
        """Push an image of the machine's engine into the cluster's registry; returns the name nodes pull it by."""
        local = f"127.0.0.1:{self.push_port}/{name}"
        run("docker", "tag", image, local)
        self.pushed.append(local)
        run("docker", "push", local, timeout=1200)
        run("docker", "image", "rm", "--no-prune", local, check=False)
        return f"{REGISTRY}/{name}"

    def in_hub(self, *command: str) -> list[str]:
        """A command line run in the hub namespace: the one place that reaches every node's address."""
        return ["nsenter", f"--net=/run/netns/{self.hub}", *command]

    def kill_engine(self, node: Node) -> None:
        """The node lost: its engine, containerd and every container process killed at once, no goodbye."""
        _kill_run_processes(self.base / node.name, f"{PREFIX}{self.id}-{node.name}", signal.SIGKILL)

    # --- taking it down ------------------------------------------------------------------------------------------

    def remove(self) -> None:
        for local in self.pushed:
            run("docker", "image", "rm", "--no-prune", local, check=False)
        remove_run(self.id)


def _cgroup_dirs(tag: str) -> list[Path]:
    """This run's cgroup folders (cgroup v1: one per controller; v2: one), deepest first."""
    found = []
    with contextlib.suppress(OSError):
        for controller in [CGROUP, *CGROUP.iterdir()]:
            for top in controller.glob(f"{tag}*") if controller.is_dir() else ():
                if top.is_dir():
                    found.extend(p for p in top.rglob("*") if p.is_dir())
                    found.append(top)
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _cgroup_pids(tag: str) -> set[int]:
    pids = set()
    for directory in _cgroup_dirs(tag):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(line) for line in (directory / "cgroup.procs").read_text().split())
    return pids


def _pids_mentioning(text: str) -> set[int]:
    """Processes whose command line names `text` (this run's folder): engines, containerd, shims, registries."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if f"{text}/" in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.add(int(entry.name))
    return found


def _kill_run_processes(folder: Path, cgroup_tag: str, sig: int) -> None:
    for pid in _pids_mentioning(str(folder)) | _cgroup_pids(cgroup_tag):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _mounts_under(folder: Path) -> list[str]:
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == str(folder) or point.startswith(f"{folder}/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def remove_run(run_id: str) -> None:
    """Take down everything of one run, whatever state it is in: processes, mounts, namespaces, cgroups, files."""
    base = TMP / f"{PREFIX}{run_id}"
    tag = f"{PREFIX}{run_id}"
    # Engines first, politely (they unmount what they can); then everything of the run, by force.
    for pidfile in base.glob("n*/d.pid"):
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(
        _alive(int(p.read_text())) for p in base.glob("n*/d.pid") if p.read_text().strip().isdigit()
    ):
        time.sleep(0.3)
    for _ in range(20):
        pids = _pids_mentioning(str(base)) | _cgroup_pids(tag)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
    for point in _mounts_under(base):
        run("umount", "-l", point, check=False)
    namespaces = run("ip", "netns", "list", check=False).stdout.split()
    for name in namespaces:
        if name.startswith(f"{tag}-"):
            run("ip", "netns", "delete", name, check=False)
    for directory in _cgroup_dirs(tag):
        with contextlib.suppress(OSError):
            directory.rmdir()
    shutil.rmtree(base, ignore_errors=True)


def leftovers() -> set[str]:
    """Run ids with something still on the machine: folders, namespaces or cgroups."""
    ids = {p.name.removeprefix(PREFIX) for p in TMP.glob(f"{PREFIX}*") if p.is_dir()}
    for name in run("ip", "netns", "list", check=False).stdout.split():
        if name.startswith(PREFIX):
            ids.add(name.removeprefix(PREFIX).split("-")[0])
    for directory in _cgroup_dirs(PREFIX):
        if directory.name.startswith(PREFIX):
            ids.add(directory.name.removeprefix(PREFIX).split("-")[0])
    return ids


def sweep() -> list[str]:
    """Remove what earlier runs left behind when their owner process is gone (a crash, a SIGKILL)."""
    removed = []
    for run_id in sorted(leftovers()):
        owner = TMP / f"{PREFIX}{run_id}" / "owner"
        with contextlib.suppress(OSError, ValueError):
            if _alive(int(owner.read_text())):
                continue  # a live run's (this process's own clusters included)
        remove_run(run_id)
        removed.append(run_id)
    return removed


@contextlib.contextmanager
def cluster(nodes: int = 3) -> Iterator[Cluster]:
    """A started cluster, removed on every way out: an exception, Ctrl-C, SIGTERM or the interpreter's exit."""
    built = Cluster(nodes)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):  # turn SIGTERM into an exception so that the finally below runs
        raise SystemExit(128 + signum)

    with contextlib.suppress(ValueError):  # not the main thread: rely on finally and atexit
        signal.signal(signal.SIGTERM, on_term)
    import atexit

    atexit.register(built.remove)
    try:
        built.start()
        yield built
    finally:
        built.remove()
        atexit.unregister(built.remove)
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # `python -m tests.swarm sweep`: remove leftovers by hand
    if sys.argv[1:] == ["sweep"]:
        print("removed:", sweep() or "nothing")
