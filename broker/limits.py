"""Every bound HQ puts on what arrives from the wire, in one place.

A Gearman peer can put any bytes in any field, declare any packet size and open any number
of connections. These numbers keep what a packet carries storable and what a hostile peer
can make HQ hold in memory finite. The column limits mirror ``jobs/models.py`` (Job and
JobEvent); the memory budgets are stated as the worst case they allow.
"""

from __future__ import annotations

# -- storable values (the tracker boundary, see broker/values.py) ----------------------------

#: varchar(255) columns: Job/JobEvent ``handle``, Job ``function``, ``unique``, ``worker``.
#: Counted in characters, as Postgres counts them.
HANDLE_MAX = 255
FUNCTION_MAX = 255
UNIQUE_MAX = 255
WORKER_MAX = 255
#: JobEvent ``conn`` is varchar(100) ("host:port" of the peer).
CONN_MAX = 100
#: JobEvent ``detail`` is text; HQ writes short notes there and keeps them short.
DETAIL_MAX = 1000
#: Boot ``token`` is varchar(64): gearmand's pid, plus ``.N`` for boots inferred from the
#: handle counter, so the pid part is kept to 40 characters.
BOOT_MAX = 64
PID_MAX = 40
#: gearmand's version string as the admin client returns it.
VERSION_MAX = 64

#: A value that had to be cut ends with this, then (for names) a short digest of the whole
#: raw value, so two long names with the same prefix stay two names.
CUT_MARK = "…"
DIGEST_HEX = 8

#: Postgres bigint (numerator, denominator).
INT8_MIN = -(2**63)
INT8_MAX = 2**63 - 1
#: Postgres integer (sizes).
INT4_MAX = 2**31 - 1
#: SUBMIT_JOB_EPOCH: seconds since 1970 up to 9999-12-31T23:59:59Z (the last second a
#: Python datetime, and so the writer, can hold). Outside: no epoch, and a note.
EPOCH_MIN = 0
EPOCH_MAX = 253_402_300_799

# -- tracker memory (broker/tracker.py) -------------------------------------------------------

#: Submits waiting for their JOB_CREATED, per connection. More are still counted (so the
#: FIFO pairing stays exact) but not remembered: their JOB_CREATED goes unmatched.
PENDING_MAX = 16_384
#: Submits waiting, all connections together: 262,144 × (≤ ~1 KiB of names) ≈ 256 MiB at
#: the very worst (two 255-character names each), ~30 MiB with ordinary names.
PENDING_TOTAL = 262_144
#: Payload bytes held by waiting submits, all connections together. Past it a submit keeps
#: its names and its size but not its payload (the job is recorded, its payload is not).
PENDING_PAYLOAD_BUDGET = 64 << 20
#: Jobs followed at once (queued or running). gearmand itself holds each of them; past the
#: cap the oldest is forgotten (counted), ~300 bytes each: ≈ 300 MiB at the cap.
JOBS_MAX = 1_000_000
#: Finished handles remembered to tell a late duplicate from a new job.
FINISHED_MEMORY = 65_536
#: Admin commands awaiting their reply on one connection. Past it the connection's replies
#: can no longer be paired: its ``cancel job`` replies are ignored from then on.
ADMIN_PENDING_MAX = 256

# -- byte sources (broker/tap.py, broker/reassembly.py) --------------------------------------

#: A binary packet may declare up to this many bytes (the parser's per-packet bound).
MAX_PACKET = 64 << 20
#: Bytes received but not parsed yet (partial packets), all connections and directions
#: together. Over it the largest buffers are dropped until 3/4 of it is left, and each
#: dropped buffer is a gap (its direction resynchronises at the next packet header).
PARSE_BUDGET = 256 << 20
#: Out-of-order bytes the reassembler holds waiting for a hole, all flows together (each
#: direction is also bounded by its own ``max_buffer``, 4 MiB). Over it the largest holes
#: are given up (reported as gaps) until 3/4 of it is left.
REASSEMBLY_BUDGET = 128 << 20
#: A flow gearmand never sent a byte on (a connection seen without its SYN that stays
#: silent, a SYN flood, traffic gearmand never answered) holds nothing the tracker needs:
#: it is closed after this much idle capture time instead of ``idle_timeout`` (an hour),
#: and such flows are evicted first when ``max_flows`` (65,536) is reached.
UNPROVEN_TIMEOUT = 120.0

# -- the admin protocol client (broker/admin.py) ---------------------------------------------

#: One reply line longer than this is not gearmand's.
ADMIN_LINE_MAX = 64 << 10
#: Lines in one multi-line reply (status, workers, show jobs) before it is given up.
ADMIN_LINES_MAX = 200_000
#: A whole command, sent and answered, must take less than this (each read also has the
#: client's timeout), so a server that dribbles bytes cannot hold the poller.
ADMIN_REPLY_S = 30.0
