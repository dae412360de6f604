"""Bundle files hashed once per change (runtime/file_stamps.py): an unchanged file is not hashed again, a changed one
is, even at the same size and mtime, and a cache that cannot be written only costs the hashing."""
from __future__ import annotations

import os
import time

import pytest

from edge_asr.runtime import file_stamps
from edge_asr.runtime.file_stamps import sha256_of

CONTENT = b"model bytes " * 1000


@pytest.fixture
def counted(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_ASR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(file_stamps, "RACY_NS", 0)  # the files here were written a moment ago
    calls = []

    def counted_sha256_of(paths):
        calls.append(paths)
        return sha256_of(paths)

    monkeypatch.setattr(file_stamps, "sha256_of", counted_sha256_of)
    return calls


def _file(tmp_path, content=CONTENT):
    path = tmp_path / "encoder.onnx"
    path.write_bytes(content)
    return path, sha256_of([path])


def test_an_unchanged_file_is_hashed_once(tmp_path, counted):
    calls = counted
    path, sha = _file(tmp_path)
    assert file_stamps.matches(path, sha) and file_stamps.matches(path, sha)
    assert len(calls) == 1
    assert not file_stamps.matches(path, "0" * 64)  # another expected hash is never taken from the stamp
    assert len(calls) == 2


def test_a_file_changed_at_the_same_size_and_mtime_is_hashed_again_and_refused(tmp_path, counted):
    calls = counted
    path, sha = _file(tmp_path)
    assert file_stamps.matches(path, sha)
    stat = path.stat()
    time.sleep(0.02)  # past the clock tick, so the write moves ctime
    path.write_bytes(CONTENT.replace(b"model", b"mode!"))  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime put back; ctime cannot be
    assert not file_stamps.matches(path, sha)
    assert len(calls) == 2


def test_a_file_just_written_is_not_stamped(tmp_path, monkeypatch, counted):
    calls = counted
    monkeypatch.setattr(file_stamps, "RACY_NS", 60_000_000_000)
    path, sha = _file(tmp_path)
    assert file_stamps.matches(path, sha) and file_stamps.matches(path, sha)
    assert len(calls) == 2


def test_a_cache_that_cannot_be_written_only_costs_the_hashing(tmp_path, monkeypatch, counted):
    calls = counted
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("EDGE_ASR_CACHE", str(blocker))
    path, sha = _file(tmp_path)
    assert file_stamps.matches(path, sha) and file_stamps.matches(path, sha)
    assert len(calls) == 2
