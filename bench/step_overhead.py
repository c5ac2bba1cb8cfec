"""The callback's cost per training step, measured step by step on one model: its light and detail steps.

``client_overhead.py`` compares whole ``fit`` runs of separate model copies, as a user would; on a shared
machine its repetitions swing by ±10 %. This one removes what differs between runs: one model, one
dataset iterator, and two train functions over the same variables, Keras' own (plain) and the
instrumented one (NanWatchCallback with defaults, service running, its ``on_train_batch_end`` included),
called alternately step by step (the order alternates too). Slow spells of the machine then hit both
alike. Instrumented steps are split by kind: light (every-step statistics) and detail (every
``activation_stride``-th step). It prints the median step-time ratio of each kind and, from them, the
mean overhead for a few strides: ``((k - 1) * light + detail) / k``.

    python bench/step_overhead.py [--steps 3000] [--models mlp,cnn]

The private attributes it reads (``_instrumentation``, ``_next_step``) are the callback's internals:
this is a measuring instrument, not an example.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras
import numpy as np
import tensorflow as tf

from bench._service import running_service
from bench.client_overhead import cnn, mlp
from nanwatch.keras import NanWatchCallback

STRIDE = 10  # the callback's default


def measure(build: Any, url: str, steps: int) -> dict[str, float]:
    keras.utils.set_random_seed(0)
    model, x, y, batch = build()
    model.fit(x[: 2 * batch], y[: 2 * batch], batch_size=batch, verbose=0)  # build the optimizer
    iterator = iter(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).repeat())
    model.make_train_function(force=True)
    plain = model.train_function
    callback = NanWatchCallback(url, run_id=f"step-overhead-{build.__name__}", halt_on="never")
    callback.set_model(model)
    callback.on_train_begin()  # installs the instrumented train function(s)
    watched, inst = model.train_function, callback._instrumentation
    assert inst is not None and inst.stride == STRIDE

    def instrumented(step: int) -> None:
        callback.on_train_batch_end(step, watched(iterator))

    for step in range(4 * STRIDE):  # trace and warm up both
        plain(iterator)
        instrumented(step)
    times = {"plain": np.zeros(steps), "watched": np.zeros(steps)}
    detail = np.zeros(steps, dtype=bool)
    for i in range(steps):
        detail[i] = inst._next_step % STRIDE == 0
        for name in ("plain", "watched") if i % 2 else ("watched", "plain"):
            start = time.perf_counter()
            plain(iterator) if name == "plain" else instrumented(i)
            times[name][i] = time.perf_counter() - start
    callback.on_train_end()
    base = float(np.median(times["plain"]))
    return {
        "plain_ms": 1e3 * base,
        "light": float(np.median(times["watched"][~detail])) / base,
        "detail": float(np.median(times["watched"][detail])) / base,
        "all_median": float(np.median(times["watched"])) / base,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--models", default="mlp,cnn")
    args = parser.parse_args()
    logging.getLogger("nanwatch").setLevel(logging.ERROR)
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, {args.steps} steps of each, interleaved")
    strides = (1, 10, 20, 50)
    print(
        f"  {'model':<6}{'plain ms':>10}{'light':>8}{'detail':>8}{'median':>8}   "
        + "".join(f"{'k=' + str(k):>8}" for k in strides)
    )
    with running_service() as url:
        for name in args.models.split(","):
            r = measure({"mlp": mlp, "cnn": cnn}[name], url, args.steps)
            mean = [((k - 1) * r["light"] + r["detail"]) / k for k in strides]
            print(
                f"  {name:<6}{r['plain_ms']:>10.3f}{r['light']:>8.3f}{r['detail']:>8.3f}{r['all_median']:>8.3f}   "
                + "".join(f"{m:>8.3f}" for m in mean)
            )


if __name__ == "__main__":
    main()
