"""Private, throw-away database servers for the data-layer tests: MariaDB and PostgreSQL, started from the
Debian packages' binaries on a free loopback port with their data in a temp dir, and stopped afterwards.

Nothing here touches a system-wide server. When the binaries are missing the tests that need them are skipped with
the command that installs them. `PENGUINS_TEST_MARIADB_URL` / `PENGUINS_TEST_POSTGRES_URL` point the tests at an
existing server instead (its database is emptied of this project's tables, nothing else).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.harness import free_port, stop_group, tagged_env

MARIADB_INSTALL = "apt-get install -y mariadb-server"
POSTGRES_INSTALL = "apt-get install -y postgresql"


class Unavailable(RuntimeError):
    """The server cannot be had here; the message says why (tests skip with it)."""


def _which(name: str, *extra_dirs: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in extra_dirs:
        for candidate in sorted(glob.glob(os.path.join(directory, name)), reverse=True):
            if os.access(candidate, os.X_OK):
                return candidate
    return None


def _wait(check, process: subprocess.Popen, log: Path, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process.poll() is not None:
            raise Unavailable(f"{what} exited with {process.returncode}: {log.read_text()[-1500:]}")
        if time.monotonic() > deadline:
            raise Unavailable(f"{what} not up after {timeout}s: {log.read_text()[-1500:]}")
        time.sleep(0.2)


def _initialise(what: str, command: list[str], root: Path) -> None:
    """Create a server's data folder under `root` (mariadb-install-db, initdb); on failure remove `root` and say why."""
    setup = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if setup.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise Unavailable(f"{what} failed: {(setup.stderr or setup.stdout)[-1500:]}")


@contextlib.contextmanager
def mariadb() -> Iterator[str]:
    """A MariaDB server of our own; yields a SQLAlchemy URL (PyMySQL) for a database and user made for the tests."""
    if os.environ.get("PENGUINS_TEST_MARIADB_URL"):
        yield os.environ["PENGUINS_TEST_MARIADB_URL"]
        return
    server = _which("mariadbd", "/usr/sbin") or _which("mysqld", "/usr/sbin")
    install_db = _which("mariadb-install-db") or _which("mysql_install_db")
    client = _which("mariadb") or _which("mysql")
    if not (server and install_db and client):
        raise Unavailable(f"MariaDB server binaries not found (Debian: {MARIADB_INSTALL})")
    root = Path(tempfile.mkdtemp(prefix="penguins-mariadb-"))
    data, socket, log = root / "data", root / "mysqld.sock", root / "server.log"
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    _initialise(
        "mariadb-install-db",
        [
            install_db,
            "--no-defaults",
            f"--datadir={data}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
            *as_root,
        ],
        root,
    )
    port = free_port()
    env, tag = tagged_env(dict(os.environ))
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                server,
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={socket}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={root / 'mysqld.pid'}",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                *as_root,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    process.tag = tag  # stop_group finds its whole tree by it
    try:
        _wait(socket.exists, process, log, "mariadbd")
        sql = (
            "CREATE DATABASE penguins; CREATE USER 'penguins'@'127.0.0.1' IDENTIFIED BY 'penguins-pw'; "
            "GRANT ALL ON penguins.* TO 'penguins'@'127.0.0.1';"
        )
        for _ in range(50):  # the socket appears a moment before the server takes logins
            made = subprocess.run(
                [client, "--no-defaults", f"--socket={socket}", "-uroot", "-e", sql],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if made.returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise Unavailable(f"cannot create the test database: {made.stderr[-800:]}")
        yield f"mysql+pymysql://penguins:penguins-pw@127.0.0.1:{port}/penguins"
    finally:
        stop_group(process, timeout=30)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server of our own (trust auth on loopback); yields a SQLAlchemy URL (psycopg 3)."""
    if os.environ.get("PENGUINS_TEST_POSTGRES_URL"):
        yield os.environ["PENGUINS_TEST_POSTGRES_URL"]
        return
    bindir = "/usr/lib/postgresql/*/bin"
    initdb, server = _which("initdb", bindir), _which("postgres", bindir)
    if not (initdb and server):
        raise Unavailable(f"PostgreSQL server binaries not found (Debian: {POSTGRES_INSTALL})")
    run_as: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="penguins-postgres-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use the package's own user
        if not shutil.which("runuser"):
            raise Unavailable("running as root without runuser: cannot start PostgreSQL as another user")
        try:
            shutil.chown(root, "postgres", "postgres")
        except (LookupError, OSError) as error:
            raise Unavailable(f"no 'postgres' user to run the server as ({error})") from error
        run_as = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"
    _initialise("initdb", [*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], root)
    port = free_port()
    log.touch()
    if run_as:
        shutil.chown(log, "postgres", "postgres")
    env, tag = tagged_env(dict(os.environ))
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                *run_as,
                server,
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "shared_buffers=16MB",
                "-c",
                "fsync=off",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    process.tag = tag  # stop_group finds its whole tree by it
    try:
        _wait(lambda: (root / f".s.PGSQL.{port}").exists(), process, log, "postgres")
        time.sleep(0.5)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop_group(process, timeout=30)
        shutil.rmtree(root, ignore_errors=True)
