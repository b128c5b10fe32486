"""glibc malloc settings (csae_bench.allocator): applied once, opt-out honoured, never raises."""

import platform
import sys

import pytest

from csae_bench import allocator


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(allocator, "_done", None)


def test_opt_out_changes_nothing(fresh, monkeypatch):
    monkeypatch.setenv("CSAE_BENCH_KEEP_FREED_MEMORY", "0")
    assert allocator.keep_freed_memory() is False


def test_off_linux_changes_nothing(fresh, monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False


def test_answer_is_kept_for_the_process(fresh, monkeypatch):
    monkeypatch.delenv("CSAE_BENCH_KEEP_FREED_MEMORY", raising=False)
    first = allocator.keep_freed_memory()
    monkeypatch.setenv("CSAE_BENCH_KEEP_FREED_MEMORY", "0")
    assert allocator.keep_freed_memory() is first
    name, version = platform.libc_ver()
    if name == "glibc" and tuple(int(v) for v in version.split(".")[:2]) >= (2, 36):
        assert first is True  # glibc 2.36 (Debian 12, the CI image) accepts both settings
