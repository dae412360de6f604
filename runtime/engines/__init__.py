"""Engines: one module per backend, all behind the interface in base.py."""
