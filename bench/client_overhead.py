"""Step-time overhead of NanWatchCallback over plain ``model.fit``, against TerminateOnNaN as well.

Two models on the machine's devices (CPU here): a 6×256 ReLU MLP and a small CNN. Modes, interleaved in
every repetition (the order rotates), each a ``fit`` of ``--steps`` steps on a fresh model (built and
warmed up by a short ``fit`` just before):

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

    python bench/client_overhead.py [--reps 7] [--steps 300] [--models mlp,cnn] [--modes plain,terminate,...]
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


def bench_model(
    name: str, build: Any, args: argparse.Namespace, url: str, down_url: str, modes: tuple[str, ...] = MODES
) -> dict[str, list[float]]:
    """Per repetition and mode a fresh model (same seed), warmed up by a short fit, then the timed fit.

    Fresh models each time: one model instance's step runs a few percent faster or slower than an identical
    one's for as long as it lives (where TensorFlow's buffers land), so a model kept per mode would carry
    its bias into every repetition; fresh ones spread it over the repetitions, and the median sees past it.
    """
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for rep in range(args.reps):
        order = modes[rep % len(modes) :] + modes[: rep % len(modes)]
        for mode in order:
            keras.utils.set_random_seed(0)
            model, x, y, batch = build()
            warm = callbacks_for(mode, url, down_url, f"warm-{name}-{mode}-{rep}")
            timed_fit(model, (x, y, batch), warm, 2 + args.skip, 0)  # build the optimizer, trace once
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
    parser.add_argument("--modes", default=",".join(MODES), help="a subset of the modes; plain is always run")
    args = parser.parse_args()
    modes = ("plain", *(m for m in args.modes.split(",") if m != "plain"))
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)}; expected some of {', '.join(MODES)}")
    logging.getLogger("nanwatch").setLevel(logging.ERROR)  # the 'service down' warning is expected here
    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices()]
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, devices {devices}")
    with running_service() as url:
        down_url = f"http://127.0.0.1:{free_port()}"
        for name in args.models.split(","):
            report(name, bench_model(name, {"mlp": mlp, "cnn": cnn}[name], args, url, down_url, modes))


if __name__ == "__main__":
    main()
