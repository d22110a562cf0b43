"""The BPF filter, checked by tcpdump itself, and the may-we-capture probe."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from broker.pcap import PcapStream
from broker.tcpdump import _probe, bpf_filter, capture_allowed

from . import pcapgen

# -- the BPF filter, checked by tcpdump itself ---------------------------------------------


def test_bpf_filter_drops_pure_acks_only(tmp_path: Path) -> None:
    """Every kind of segment, IPv4 and IPv6, through `tcpdump -r` with our filter."""
    writer = pcapgen.PcapWriter()
    expected: list[tuple[int, bytes]] = []
    for peer, server in (("10.0.0.2", "10.0.0.1"), ("2001:db8::2", "2001:db8::1")):
        for options in (b"", pcapgen.TIMESTAMP_OPTIONS):
            conv = pcapgen.Conversation(peer=peer, server=server, options=options)
            cases = [
                (conv.syn(), True),
                (conv.syn_ack(), True),
                (conv.data(True, 0, b""), False),
                (conv.data(False, 0, b""), False),
                (conv.data(True, 0, b"x"), True),
                (conv.data(False, 0, b"\0RES" * 100), True),
                (conv.fin(True, 1), True),
                (conv.rst(False, 0), True),
                (
                    pcapgen.Conversation(peer=peer, server=server, server_port=4731).data(
                        True, 0, b"other port"
                    ),
                    False,
                ),
            ]
            for index, (frame, kept) in enumerate(cases):
                writer.add(frame)
                if kept:
                    expected.append((index, frame))
    path = tmp_path / "in.pcap"
    path.write_bytes(writer.to_bytes())
    tcpdump = shutil.which("tcpdump") or "/usr/bin/tcpdump"
    out = subprocess.run(
        [tcpdump, "-r", str(path), "-w", "-", bpf_filter(4730)], capture_output=True, check=True
    ).stdout
    survivors = [bytes(frame) for _ts, frame in PcapStream().feed(out)]
    assert survivors == [frame for _index, frame in expected]


# -- may we capture? -----------------------------------------------------------------------


def test_capture_allowed() -> None:
    assert os.geteuid() == 0, "these tests run as root, like `make test`"
    assert capture_allowed() is True
    assert _probe("tcpdump", "lo", 5.0) is True  # the path taken without CAP_NET_RAW
    assert capture_allowed(tcpdump="/nonexistent/tcpdump") is False

