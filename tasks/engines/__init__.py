"""The engine registry: the bundle's roles, and the engines that can fill each one.

Every module in this package that defines `ENGINE` is an engine; so is any object registered
with `register` (a test's toy engine) or published by an installed package under the
`genbundle.engines` entry-point group. The rest of genbundle finds engines here and never
names one: adding an engine is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib import metadata

from tasks.engines.base import (
    CostLimits,
    Engine,
    Licence,
    Params,
    PromptTemplate,
    Role,
    check_params,
    multiple_of,
)

__all__ = [
    "ROLES", "CostLimits", "Engine", "Licence", "Params", "PromptTemplate", "Role", "UnknownEngine", "all_engines",
    "check_params", "default_engine", "engine", "engines_for", "multiple_of", "register",
]  # fmt: skip

# The bundle's parts, in the order they are generated and listed. Each brief section names its engine.
ROLES: dict[str, Role] = {
    "cover": Role("cover", "cover.png", "Book cover art", "gpu-image", "a book cover illustration"),
    "sound": Role("sound", "engine_raw.wav", "Engine sound", "gpu-audio", "a sound effect"),
    "video": Role("video", "car.mp4", "Car video", "gpu-video", "a short film shot"),
}

_registered: dict[str, Engine] = {}
_discovered = False


class UnknownEngine(ValueError):
    pass


def register(instance: Engine) -> Engine:
    """Add an engine (by its name; a later one of the same name replaces the earlier)."""
    if instance.role not in ROLES:
        raise ValueError(f"engine {instance.name}: unknown role {instance.role!r}; roles are {', '.join(ROLES)}")
    _registered[instance.name] = instance
    return instance


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "ENGINE", None), Engine):
            _registered.setdefault(module.ENGINE.name, module.ENGINE)
    for entry in metadata.entry_points(group="genbundle.engines"):
        _registered.setdefault(entry.name, entry.load())


def all_engines() -> dict[str, Engine]:
    _discover()
    return dict(_registered)


def engine(name: str) -> Engine:
    found = all_engines().get(name)
    if found is None:
        raise UnknownEngine(f"unknown engine {name!r}; registered: {', '.join(sorted(all_engines()))}")
    return found


def engines_for(role: str) -> list[Engine]:
    return [e for e in all_engines().values() if e.role == role]


def default_engine(role: str) -> Engine:
    """The engine a brief gets for a role when it names none (the seed engines)."""
    (found,) = [e for e in engines_for(role) if e.default]
    return found
