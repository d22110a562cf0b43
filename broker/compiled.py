"""The capture tap's per-packet modules, compiled by mypyc when the package is installed.

``pip install .`` / ``pip install -e .`` (setup.py) compiles the modules in :data:`MODULES`
into C extensions next to their ``.py`` files, and records each source's digest in
:data:`STAMP`. Python imports an extension before a ``.py`` of the same name, so the
compiled build is used whenever it is there, unless :func:`guard` (run by
``broker/__init__.py`` before any of them is imported) sends the imports to the ``.py``
files instead:

- ``HQ_PURE_PYTHON=1`` in the environment asks for pure Python;
- a source changed since it was compiled (an edited checkout): its extension would run the
  old code, so every module runs pure Python, with a warning, until the next install.

All or nothing: the compiled modules call each other natively, so they are never mixed
with pure ones. :func:`status` says which is in use, for the tap's start-up log.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

#: broker modules on the per-packet path (pcap → reassembly → parser → tracker → tap)
MODULES = ("adminwatch", "boots", "jobstate", "pcap", "protocol", "reassembly", "tap",
           "tcpflow", "tracker", "values", "workers")
#: written by setup.py next to the extensions: "<module> <sha256 of its .py>" per line
STAMP = "compiled.sha256"
HERE = Path(__file__).resolve().parent
_state = {"why": ""}  # why the pure modules are used although extensions are there


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def built() -> bool:
    """Are there extensions for the modules next to their sources?"""
    return any((HERE / f"tracker{suffix}").exists()
               for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def stale() -> list[str]:
    """The modules whose source differs from what was compiled (all, without a stamp)."""
    try:
        lines = (HERE / STAMP).read_text().split("\n")
    except OSError:
        return list(MODULES)
    recorded = dict(line.split(" ", 1) for line in lines if " " in line)
    return [name for name in MODULES
            if recorded.get(name) != digest(HERE / f"{name}.py")]


class PureFinder:
    """A meta path finder that imports the listed broker modules from their ``.py``."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.names = {f"{__package__}.{name}" for name in modules}

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in self.names:
            return None
        source = HERE / f"{fullname.rpartition('.')[2]}.py"
        return importlib.util.spec_from_file_location(fullname, source)


def guard() -> None:
    """Use the pure-Python modules when asked to or when the compiled ones are stale."""
    if not built():
        return
    if os.environ.get("HQ_PURE_PYTHON", "").lower() in ("1", "true", "yes"):
        why = "HQ_PURE_PYTHON is set"
    else:
        changed = stale()
        if not changed:
            return
        why = f"source changed since it was compiled: {', '.join(changed)}"
        warnings.warn(f"broker: running pure Python, {why}; reinstall (pip install -e .) "
                      "to compile again", RuntimeWarning, stacklevel=2)
    _state["why"] = why
    sys.meta_path.insert(0, PureFinder(MODULES))


def status() -> str:
    """``compiled (mypyc)`` or ``pure Python (why)``, for logs."""
    from broker import tracker

    if not tracker.__file__ or tracker.__file__.endswith(".py"):
        return f"pure Python ({_state['why'] or 'not compiled'})"
    return "compiled (mypyc)"
