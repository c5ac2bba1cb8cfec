"""Fixtures for the Keras callback tests: a recording endpoint, a fresh Keras session, fit helpers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import pytest

from nanwatch.keras import NanWatchCallback
from tests.keras.recorder import Recorder


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A real HTTP endpoint on 127.0.0.1 that keeps what the callback sends; stopped after the test."""
    with Recorder() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_keras() -> Iterator[None]:
    """Every test starts from a clear Keras session and the float32 policy, and leaves them so."""
    keras.backend.clear_session()
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)
    keras.backend.clear_session()


@dataclass
class Fitted:
    """One instrumented ``fit``: the callback, what the endpoint received, Keras' history."""

    callback: NanWatchCallback
    records: list[dict[str, Any]]
    run: dict[str, Any]
    history: Any


def fit_watched(model: keras.Model, x: Any, y: Any, recorder: Recorder, *, callbacks: Any = (),
                watch: dict[str, Any] | None = None, **fit_kwargs: Any) -> Fitted:  # fmt: skip
    """``model.fit`` with a NanWatchCallback reporting to ``recorder``; flushed when it returns."""
    run_id = f"test-{np.random.randint(1 << 30)}"
    callback = NanWatchCallback(recorder.url, run_id=run_id, flush_interval=0.05, timeout=5.0, **(watch or {}))
    fit_kwargs = {"verbose": 0, "shuffle": False, **fit_kwargs}
    history = model.fit(x, y, callbacks=[callback, *callbacks], **fit_kwargs)
    records = sorted({r["step"]: r for r in recorder.records(run_id)}.values(), key=lambda r: r["step"])
    return Fitted(callback, records, recorder.runs.get(run_id, {}), history)
