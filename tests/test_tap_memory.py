"""A tap gives back the memory of a burst (hq/tap/memory.py): glibc keeps freed pages that
are not at the top of a heap, so a tap's RSS stayed at its peaks (issue 13)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hq.tap import memory

ROOT = Path(__file__).resolve().parent.parent

# a burst of malloc'd blocks (bytes over pymalloc's 512-byte limit), every other one kept:
# the freed half sits below the kept blocks, where free() alone cannot return it
BURST = """
import json, sys
sys.path.insert(0, sys.argv[1])
from hq.tap import memory

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])

blocks = [bytes(16_000) + bytes([i % 256]) for i in range(10_000)]
kept = blocks[1::2]
del blocks
before = rss_kb()
trimmed = memory.trim() if sys.argv[2] == "1" else False
print(json.dumps({"before": before, "after": rss_kb(), "trimmed": trimmed, "kept": len(kept)}))
"""


def glibc() -> bool:
    return memory._glibc() is not None


@pytest.mark.skipif(not glibc(), reason="the C library is not glibc: trim is a no-op")
def test_trim_gives_back_the_pages_a_burst_freed() -> None:
    def burst(trim: bool) -> dict[str, int]:
        done = subprocess.run([sys.executable, "-c", BURST, str(ROOT), "1" if trim else "0"],
                              capture_output=True, text=True, check=True, timeout=60)
        result: dict[str, int] = json.loads(done.stdout)
        return result

    kept = burst(trim=False)
    assert kept["before"] - kept["after"] < 10_000, kept  # free() alone keeps the pages
    got = burst(trim=True)
    assert got["trimmed"] is True
    # 5,000 freed 16 KB blocks are ~80 MB; most of it goes back
    assert got["before"] - got["after"] > 40_000, got


@pytest.mark.skipif(not glibc(), reason="the C library is not glibc")
def test_arenas_can_be_capped() -> None:
    done = subprocess.run([sys.executable, "-c",
                           f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
                           "from hq.tap import memory; print(memory.limit_arenas())"],
                          capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "True"
