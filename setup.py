"""Compiles the capture tap's per-packet modules (broker.compiled.MODULES) with mypyc.

Everything else about the package is in pyproject.toml. ``pip install .`` and
``pip install -e .`` run this with mypy (which ships mypyc) installed by pip as a build
dependency. The modules stay plain Python as well: when compiling is not possible (no C
compiler, no mypy) or not wanted (``HQ_PURE_PYTHON=1``), the install goes on without the
extensions and HQ runs the same code interpreted (see broker/compiled.py).
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NAMES = runpy.run_path(str(ROOT / "broker" / "compiled.py"))
MODULES: tuple[str, ...] = NAMES["MODULES"]
STAMP: str = NAMES["STAMP"]
digest = NAMES["digest"]
SOURCES: dict[str, str] = {}


def say(message: str) -> None:
    print(f"gearman-hq: {message}", file=sys.stderr, flush=True)


class BuildOrFallBack(build_ext):
    """build_ext that leaves the pure-Python modules in charge when compiling fails, and
    records what it compiled (broker/compiled.sha256) next to the extensions."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            say(f"compiling the hot path failed ({exc}); installing pure Python")
            return
        target = Path(self.get_ext_fullpath("broker.tracker")).parent
        target.mkdir(parents=True, exist_ok=True)
        (target / STAMP).write_text("".join(f"{name} {SOURCES[name]}\n" for name in MODULES))
        say(f"compiled the hot path with mypyc: broker.{{{','.join(MODULES)}}}")

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception:
            self._remove_built()
            raise

    def _remove_built(self) -> None:
        """No half build: the modules are used compiled all together or not at all."""
        for ext in self.extensions:
            Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)


def extensions() -> list[Any]:
    if os.environ.get("HQ_PURE_PYTHON", "").lower() in ("1", "true", "yes"):
        say("HQ_PURE_PYTHON is set: not compiling, installing pure Python")
        return []
    if not (ROOT / "broker" / "tracker.py").exists():
        return []  # pyproject.toml alone (the Dockerfile's dependency layer)
    try:
        from mypyc.build import mypycify
    except ImportError:
        say("mypy (mypyc) is not installed: installing pure Python")
        return []
    paths = [f"broker/{name}.py" for name in MODULES]
    # the digests of the sources as compiled (one edited meanwhile is then seen as stale)
    SOURCES.update({name: digest(ROOT / path) for name, path in zip(MODULES, paths, strict=True)})
    try:
        # --config-file=: pyproject's [tool.mypy] loads Django plugins the build lacks
        return list(mypycify(["--config-file=", *paths], group_name="hq_broker"))
    except (Exception, SystemExit) as exc:
        say(f"mypyc could not compile the hot path ({exc!r}): installing pure Python")
        return []


os.chdir(ROOT)  # mypycify takes paths relative to the project
setup(ext_modules=extensions(), cmdclass={"build_ext": BuildOrFallBack})
