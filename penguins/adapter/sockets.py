"""A listening socket per worker (SO_REUSEPORT), so the kernel spreads new connections over BentoML's workers."""

from __future__ import annotations

import logging
import os
import socket
import sys

from penguins.adapter.guard import Target, fits, fix

logger = logging.getLogger("penguins.adapter")
WORKER = "_bentoml_impl/worker/service.py"

SPREAD_CONNECTIONS = fix(
    "spread_connections",
    "bentoml",
    # Patches nothing: it relies on how BentoML starts an HTTP worker (`python -m _bentoml_impl.worker.service
    # --fd N --backlog B`, the worker making its socket from that descriptor).
    [Target("_bentoml_impl.worker.service", "main.callback", uses=("fd", "backlog", "socket"))],
    upstream="bentoml/BentoML#5426",
    what="every worker accepts from one shared socket: the first awake takes a whole burst of connections",
)


def spread_connections(worker_index: int | None) -> bool:
    """Give every worker but the first its own listening socket on the server's address, so that the kernel spreads
    new connections over the workers (SO_REUSEPORT); True when this worker took one.

    BentoML's process manager opens one listening socket and every worker accepts from it (bentoml/BentoML#5426).
    uvicorn on uvloop accepts every pending connection each time it wakes, so the worker that wakes first takes a
    whole burst of new connections and keeps them while they stay open: a load generator's 32 keep-alive connections
    landed 32/0, 14/18 and 1/31 on two workers. With a socket per worker in one SO_REUSEPORT group the kernel picks a
    socket per connection by a hash of its addresses.

    The first worker keeps the shared socket (the process manager holds it, so connections routed to it wait while
    that worker restarts); the others bind their own and put it in place of the inherited descriptor before uvicorn
    starts listening on it. Call it last in the worker's start-up: from its `listen` on, the kernel routes
    connections to this worker. Connections still queued on a worker's own socket when that worker exits are reset.
    """
    fd = _inherited_listener()
    if fd is None or not fits(SPREAD_CONNECTIONS.name):
        return False
    with socket.socket(fileno=os.dup(fd)) as shared:
        if shared.type != socket.SOCK_STREAM or shared.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        # On the shared socket itself (all workers hold it): the sockets bound below may join it on its port.
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if not worker_index or worker_index == 1:
            return False
        own = socket.socket(shared.family, socket.SOCK_STREAM)
        try:
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            own.bind(shared.getsockname())
            own.listen(_argument("--backlog", 2048))
            os.dup2(own.fileno(), fd)  # the inherited number now names this worker's socket; uvicorn listens on it
        except OSError as error:  # keep the shared socket: the old, uneven behaviour, but serving
            logger.warning("worker %s keeps the shared listening socket: %s", worker_index, error)
            return False
        finally:
            own.close()
    return True


def _inherited_listener() -> int | None:
    """The listening socket BentoML hands its HTTP worker (`python -m _bentoml_impl.worker.service --fd N`)."""
    if not sys.argv or not sys.argv[0].replace(os.sep, "/").endswith(WORKER):
        return None  # not a BentoML HTTP worker (in-process tests, a dependency service over a Unix socket, ...)
    fd = _argument("--fd", None)
    if fd is None:
        return None
    try:
        with socket.socket(fileno=os.dup(fd)) as candidate:
            listening = candidate.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        return None
    return fd if listening else None


def _argument(flag: str, default: int | None) -> int | None:
    arguments = sys.argv[1:]
    for i, argument in enumerate(arguments):
        if argument == flag and i + 1 < len(arguments) and arguments[i + 1].isdigit():
            return int(arguments[i + 1])
        if argument.startswith(flag + "=") and argument.split("=", 1)[1].isdigit():
            return int(argument.split("=", 1)[1])
    return default
