"""Helpers the test modules share: plain functions and classes, no fixtures (those live in
``conftest.py``). A test module imports from here, never from another test module."""
