"""Gearman wire layer: codec, tracker and byte sources. Importable without Django."""
