"""How every fix in the adapter decides whether it may patch: by the shape of what it patches, never by a version.

A fix names its targets (`Target`: a module attribute, the parameters it has, the names its code uses that the fix
relies on). On any BentoML 1.4.x or uvicorn where each target is there with that shape, the fix is on; where one moved
or changed, the fix stays off, the worker logs why once, and `status()` (shown in `/models`) says so with the
versions: the service then runs as stock BentoML does, never patched blind. The versions the suite has passed on are
recorded in `TESTED` and reported when the installed one is outside them, but are never by themselves a reason to
turn a fix off.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel, Field

logger = logging.getLogger("penguins.adapter")

# The versions the whole suite (and CI's upgrade canary) has passed on, per library whose internals are patched.
TESTED: dict[str, tuple[str, ...]] = {"bentoml": ("1.4.39", "1.4.40"), "uvicorn": ("0.54.0", "0.55.0")}


@dataclass(frozen=True)
class Target:
    """One attribute a fix patches or relies on: `module`'s `attribute` (dotted inside the module), with exactly
    these parameters when it is callable (`params`, None: not checked) and whose code refers to each of `uses`
    (attribute or global names the fix depends on the target reading or setting)."""

    module: str
    attribute: str
    params: tuple[str, ...] | None = None
    uses: tuple[str, ...] = ()

    def misfit(self) -> str | None:
        where = f"{self.module}.{self.attribute}"
        try:
            target: Any = importlib.import_module(self.module)
            for part in self.attribute.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as error:
            return f"{where} is gone ({error})"
        target = getattr(target, "__penguins_original__", target)  # a fix already applied: judge what it wraps
        if self.params is not None:
            try:
                found = tuple(inspect.signature(target).parameters)
            except (TypeError, ValueError) as error:
                return f"{where} has no signature ({error})"
            if found != self.params:
                return f"{where} takes {found}, not {self.params}"
        if self.uses:
            names = _names_used(target)
            missing = [name for name in self.uses if name not in names]
            if missing:
                return f"{where} no longer uses {', '.join(missing)}"
        return None


def _names_used(target: Any) -> set[str]:
    """Every name the code of `target` (a function, or each method of a class) refers to, nested code included."""
    functions = [target] if not inspect.isclass(target) else list(vars(target).values())
    functions = [f.fget if isinstance(f, property) else f for f in functions]
    names: set[str] = set()
    for function in functions:
        code = getattr(inspect.unwrap(getattr(function, "__func__", function)), "__code__", None)
        stack = [code] if code is not None else []
        while stack:
            code = stack.pop()
            names.update(code.co_names, code.co_varnames, code.co_freevars)
            stack.extend(c for c in code.co_consts if inspect.iscode(c))
    return names


@dataclass(frozen=True)
class Fix:
    name: str
    distribution: str  # the library whose internals it patches (bentoml or uvicorn)
    targets: tuple[Target, ...]
    upstream: str  # the upstream issue, or where the proposal that would retire it is (docs/upstream.md)
    what: str  # one line: what it fixes
    patch: bool = True  # False: a reliance on internals it reads, not a replacement (counted apart from the patches)
    # Checks of what the targets answer, beyond their shape: each returns why it does not fit, or None.
    behaviour: list[Callable[[], str | None]] = field(default_factory=list)


FIXES: dict[str, Fix] = {}


def fix(name: str, distribution: str, targets: list[Target], upstream: str, what: str, patch: bool = True) -> Fix:
    """Declare a fix beside its code (each module of the adapter declares its own)."""
    FIXES[name] = Fix(name, distribution, tuple(targets), upstream, what, patch)
    return FIXES[name]


def installed(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def misfit(name: str) -> str | None:
    """Why the fix must stay off here (a target moved or changed shape), or None when it fits."""
    for target in FIXES[name].targets:
        problem = target.misfit()
        if problem is not None:
            return problem
    for check in FIXES[name].behaviour:
        problem = check()
        if problem is not None:
            return problem
    return None


@functools.cache  # once per process: the answer, and its log line
def fits(name: str) -> bool:
    problem = misfit(name)
    if problem is not None:
        logger.warning("Workaround %s stays off: %s (%s)", name, problem, _versions())
    return problem is None


def _versions() -> str:
    return ", ".join(f"{d} {installed(d)}" for d in TESTED)


@functools.cache
def untested_versions() -> dict[str, str]:
    """The patched libraries installed at a version the suite has not passed on (logged once, reported)."""
    outside = {d: installed(d) for d, tested in TESTED.items() if installed(d) not in tested}
    if outside:
        logger.warning(
            "Workarounds: %s not among the tested %s; each fix is on where its target's shape fits",
            ", ".join(f"{d} {v}" for d, v in outside.items()),
            "; ".join(f"{d} {', '.join(v)}" for d, v in TESTED.items()),
        )
    return outside


class FixStatus(BaseModel):
    name: str
    on: bool
    patch: bool = Field(description="A replacement of library code; false: internals only read (the store layout)")
    why_off: str | None = Field(description="What no longer has the shape the fix was written for")
    upstream: str
    what: str


class AdapterStatus(BaseModel):
    versions: dict[str, str] = Field(description="The installed versions of the libraries whose internals we patch")
    tested: dict[str, list[str]] = Field(description="The versions the suite has passed on")
    untested: bool = Field(description="An installed version is outside the tested ones (the fixes still apply)")
    fixes: list[FixStatus]


def status() -> AdapterStatus:
    return AdapterStatus(
        versions={d: installed(d) for d in TESTED},
        tested={d: list(v) for d, v in TESTED.items()},
        untested=bool(untested_versions()),
        fixes=[
            FixStatus(
                name=f.name, on=fits(f.name), patch=f.patch, why_off=misfit(f.name), upstream=f.upstream, what=f.what
            )
            for f in FIXES.values()
        ],
    )


def mark(patched: Any, original: Any, flag: str) -> Any:
    """Tag a replacement: applied once (`flag`), and the shape check judges the original it wraps."""
    setattr(patched, flag, True)
    patched.__penguins_original__ = original
    return patched
