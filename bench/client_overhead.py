"""Step-time overhead of NanWatchCallback over plain ``model.fit``, against TerminateOnNaN as well.

Two models on the machine's devices (CPU here): a 6×256 ReLU MLP and a small CNN. Modes, interleaved in
every repetition (the order rotates), each a fresh ``fit`` of ``--steps`` steps on an already built model:

    plain            model.fit, no callback
    terminate        model.fit with keras.callbacks.TerminateOnNaN
    nanwatch         NanWatchCallback, defaults (activation_stride="auto"), service running
    nanwatch_stride1 NanWatchCallback(activation_stride=1): every statistic on every step, service running
    nanwatch_noact   NanWatchCallback(activation_stats=False), service running
    nanwatch_down    NanWatchCallback, defaults, nothing listening at the URL

The step time of one fit is the median of its per-step wall times (batch end to batch end, measured by a
callback that runs after every other; the first ``--skip`` steps, where the step function is traced, are
left out): on a shared machine single steps stall now and then, and the median is robust to that where
the mean is not. The table shows the median over repetitions and the ratio to ``plain``; the per-rep
ratios compare each repetition with that repetition's ``plain``.

    python bench/client_overhead.py [--reps 7] [--steps 300]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras
import numpy as np

from bench._service import free_port, running_service
from nanwatch.keras import NanWatchCallback

MODES = ("plain", "terminate", "nanwatch", "nanwatch_stride1", "nanwatch_noact", "nanwatch_down")


class StepClock(keras.callbacks.Callback):
    """Wall time at every batch end (append last, so it includes the other callbacks' work)."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.ends.append(time.perf_counter())


def mlp() -> tuple[keras.Model, np.ndarray, np.ndarray, int]:
    layers = [keras.Input((64,))] + [keras.layers.Dense(256, activation="relu") for _ in range(6)]
    model = keras.Sequential([*layers, keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(True))
    rng = np.random.default_rng(0)
    return model, rng.normal(size=(256 * 64, 64)).astype("float32"), rng.integers(0, 10, 256 * 64), 256


def cnn() -> tuple[keras.Model, np.ndarray, np.ndarray, int]:
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(True))
    rng = np.random.default_rng(0)
    return model, rng.random((64 * 64, 28, 28, 1), dtype="float32"), rng.integers(0, 10, 64 * 64), 64


def callbacks_for(mode: str, url: str, down_url: str, run: str) -> list[keras.callbacks.Callback]:
    if mode == "terminate":
        return [keras.callbacks.TerminateOnNaN()]
    if mode.startswith("nanwatch"):
        return [
            NanWatchCallback(
                down_url if mode == "nanwatch_down" else url,
                run_id=run,
                activation_stats=mode != "nanwatch_noact",
                activation_stride=1 if mode == "nanwatch_stride1" else "auto",
                halt_on="never",
            )
        ]
    return []


def timed_fit(model: keras.Model, data: tuple[Any, Any, int], callbacks: list[Any], steps: int, skip: int) -> float:
    x, y, batch = data
    clock = StepClock()
    repeats = -(-steps * batch // len(x))
    xs, ys = np.concatenate([x] * repeats)[: steps * batch], np.concatenate([y] * repeats)[: steps * batch]
    model.fit(xs, ys, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[*callbacks, clock])
    steps_times = np.diff(clock.ends[skip:])
    return float(np.median(steps_times))  # robust to the stalls a shared machine adds to single steps


def bench_model(name: str, build: Any, args: argparse.Namespace, url: str, down_url: str) -> dict[str, list[float]]:
    keras.utils.set_random_seed(0)
    built = {mode: build() for mode in MODES}
    for mode, (model, x, y, batch) in built.items():  # warm up: build and trace once
        timed_fit(model, (x, y, batch), callbacks_for(mode, url, down_url, f"warm-{name}-{mode}"), 2 + args.skip, 0)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for rep in range(args.reps):
        order = MODES[rep % len(MODES) :] + MODES[: rep % len(MODES)]
        for mode in order:
            model, x, y, batch = built[mode]
            cbs = callbacks_for(mode, url, down_url, f"{name}-{mode}-{rep}")
            times[mode].append(timed_fit(model, (x, y, batch), cbs, args.steps, args.skip))
    return times


def report(name: str, times: dict[str, list[float]]) -> None:
    plain = statistics.median(times["plain"])
    print(f"\n{name}: median step time over {len(times['plain'])} interleaved repetitions")
    print(f"  {'mode':<18}{'ms/step':>10}{'ratio':>9}   per-rep ratios")
    for mode, values in times.items():
        ratios = [v / p for v, p in zip(values, times["plain"], strict=True)]
        shown = " ".join(f"{r:.3f}" for r in ratios)
        print(
            f"  {mode:<18}{1e3 * statistics.median(values):>10.3f}{statistics.median(values) / plain:>9.3f}   {shown}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--skip", type=int, default=20)
    parser.add_argument("--models", default="mlp,cnn")
    args = parser.parse_args()
    logging.getLogger("nanwatch").setLevel(logging.ERROR)  # the 'service down' warning is expected here
    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices()]
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, devices {devices}")
    with running_service() as url:
        down_url = f"http://127.0.0.1:{free_port()}"
        for name in args.models.split(","):
            report(name, bench_model(name, {"mlp": mlp, "cnn": cnn}[name], args, url, down_url))


if __name__ == "__main__":
    main()
