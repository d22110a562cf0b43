"""The hot path compiled (mypyc, by pip install) and pure Python give the same results.

The rest of tests/broker runs whichever build is in use (compiled after ``pip install -e
.`` with a C compiler); these tests say which it is, replay one mixed capture both ways in
subprocesses and compare every event and counter, and run a slice of the broker tests with
the pure modules forced (``HQ_PURE_PYTHON=1``).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from broker import compiled

ROOT = Path(__file__).resolve().parents[2]
IN_USE = compiled.status()
COMPILED = IN_USE.startswith("compiled")
#: broker tests that exercise every compiled module; run again with the pure modules
PURE_SLICE = ["test_protocol.py", "test_pcap.py", "test_reassembly.py", "test_tracker.py",
              "test_bounds.py", "test_boots.py", "test_workers.py", "test_tap.py",
              "test_hostile.py", "test_capture.py"]


def run(*argv: str, pure: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HQ_PURE_PYTHON", None)
    if pure:
        env["HQ_PURE_PYTHON"] = "1"
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def replay(out: Path, other: Path | None, *, pure: bool) -> tuple[str, list, dict, list]:
    argv = ["-m", "tests.broker.mixed_capture", str(out)]
    done = run(*argv, *([str(other)] if other else []), pure=pure)
    assert done.returncode == 0, done.stderr[-3000:]
    return pickle.loads(out.read_bytes())


def test_the_hot_path_says_whether_it_is_compiled() -> None:
    """Every listed module comes from the same build, and the status says which."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    files = {name: importlib.import_module(f"broker.{name}").__file__ or ""
             for name in compiled.MODULES}
    kinds = {name: path.endswith(suffixes) for name, path in files.items()}
    assert set(kinds.values()) == {COMPILED}, files
    if not COMPILED:
        # CI (.ci/run) requires the build: a compile that silently fell back fails there
        if os.environ.get("HQ_REQUIRE_COMPILED") == "1":
            pytest.fail(f"HQ_REQUIRE_COMPILED=1 but the hot path runs {IN_USE}")
        pytest.skip(f"the hot path runs {IN_USE}")
    assert not compiled.stale()


def test_compiled_and_pure_replay_a_capture_to_the_same_events(tmp_path: Path) -> None:
    first = replay(tmp_path / "default.pkl", None, pure=False)
    pure = replay(tmp_path / "pure.pkl", tmp_path / "default.pkl", pure=True)
    again = replay(tmp_path / "again.pkl", tmp_path / "pure.pkl", pure=False)
    assert first[0] == IN_USE
    assert pure[0].startswith("pure Python")
    events, counters = first[1], first[2]
    assert len(events) > 1500 and counters["tap"]["decode_errors"] > 0  # the capture is mixed
    assert {e.kind for e in events} >= {"submitted", "started", "status", "data", "completed",
                                        "failed", "exception"}
    assert pure[1] == events
    assert pure[2] == counters
    # events pickled by one build are read by the other
    assert pure[3] == events
    assert again[3] == events


def test_the_broker_tests_pass_with_the_pure_modules() -> None:
    if not COMPILED:
        pytest.skip(f"the main run already uses the pure modules ({IN_USE})")
    done = run("-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
               *[f"tests/broker/{name}" for name in PURE_SLICE], pure=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


def test_a_changed_source_is_not_run_from_its_old_build(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in compiled.MODULES:
        (tmp_path / f"{name}.py").write_text(f"# {name}\n")
    monkeypatch.setattr(compiled, "HERE", tmp_path)
    assert compiled.stale() == list(compiled.MODULES)  # no stamp: nothing is trusted
    (tmp_path / compiled.STAMP).write_text("".join(
        f"{name} {compiled.digest(tmp_path / f'{name}.py')}\n" for name in compiled.MODULES))
    assert compiled.stale() == []
    (tmp_path / "tracker.py").write_text("# tracker, edited\n")
    assert compiled.stale() == ["tracker"]
    spec = compiled.PureFinder(compiled.MODULES).find_spec("broker.tracker", None)
    assert spec is not None and spec.origin == str(tmp_path / "tracker.py")
    assert compiled.PureFinder(compiled.MODULES).find_spec("broker.stream", None) is None
