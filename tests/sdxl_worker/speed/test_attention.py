"""Attention backend: SDPA unless xformers is asked for, installed and working."""

from __future__ import annotations

import logging

import pytest

from sdxl_worker.speed.attention import configure_attention


class Pipe:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.enabled = False

    def enable_xformers_memory_efficient_attention(self) -> None:
        if self.error:
            raise self.error
        self.enabled = True


def test_sdpa_by_default() -> None:
    pipe = Pipe()
    assert configure_attention(pipe, "sdpa") == "sdpa" and not pipe.enabled


def test_xformers_missing_warns_and_keeps_sdpa(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with caplog.at_level(logging.WARNING):
        assert configure_attention(Pipe(), "xformers") == "sdpa"
    assert "xformers is not installed" in caplog.text


def test_xformers_not_working_warns_and_keeps_sdpa(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    with caplog.at_level(logging.WARNING):
        assert configure_attention(Pipe(ValueError("needs CUDA")), "xformers") == "sdpa"
    assert "does not work here (needs CUDA)" in caplog.text


def test_xformers_working_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    pipe = Pipe()
    assert configure_attention(pipe, "xformers") == "xformers" and pipe.enabled


def test_cuda_error_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    with pytest.raises(RuntimeError, match="CUDA error"):
        configure_attention(Pipe(RuntimeError("CUDA error: device-side assert")), "xformers")
