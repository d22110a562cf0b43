"""Gearman wire layer: codec, tracker and byte sources. Importable without Django."""

from broker.compiled import guard

# Before any per-packet module is imported: their compiled build, unless told or stale.
guard()
