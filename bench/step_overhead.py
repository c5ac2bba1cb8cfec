"""The callback's cost per training step, measured step by step on one model: its light and detail steps.

``client_overhead.py`` compares whole ``fit`` runs of separate model copies, as a user would; on a shared
machine its repetitions swing by ±10 %. This one removes what differs between runs: one model, one
dataset iterator, and two train functions over the same variables, Keras' own (plain) and the
instrumented one (NanWatchCallback with defaults, service running), called alternately step by step
(the order alternates too), each with the callback hooks ``fit`` runs around it (see ``instrumented``).
Slow spells of the machine then hit both alike. Instrumented steps are split by kind: light (every-step
statistics) and detail (the steps the callback's ``activation_stride`` picks). It prints the median
step-time ratio of each kind and, from them, the mean overhead for a few strides:
``((k - 1) * light + detail) / k``; ``auto`` is that mean at the strides the default
``activation_stride="auto"`` chose during the run (``k auto``: their range, and the stride of their mean
rate; ``_stride``: within 0.5 % of the step time for the details, k in [10, 100]), which is what ``fit``
with defaults pays.

    python bench/step_overhead.py [--runs 5] [--steps 2000] [--models mlp,cnn] [--inline-records] [--no-service]
                                  [--graph] [--guard]

``--no-service`` points the callback at a loopback port where nothing listens (issue 3's acceptance 3:
the sender backs off, and no service process shares the machine). ``--inline-records`` adds a third
arm, a second instrumented copy of the model whose records are made on the training thread
(``Monitor.log_step`` with the unpacked vector, as before ``log_step_later``): what handing the
unpacking to the sender thread saves. Its column is the ratio of its median step to plain.

``--graph`` adds an arm that calls the instrumented train function with the plain arm's hooks (no
nanwatch hook: nothing read, nothing sent): its ``graph`` column is the light step's ratio without the
host's part, so ``light - graph`` is what the callback and the sender thread cost.

``--guard`` adds a second model copy, instrumented with ``guard=False``, and its own plain arm (both
interleaved with the others): its ``unguarded`` column is its light step's ratio to its own plain step,
and ``guard`` is ``light - unguarded``, the guard's cost on a healthy step (the ``tf.cond`` around the
optimizer's update, its scalar sum and finite test) as a fraction of the step.

``--runs N`` (default 5) measures each model in N fresh processes, one after the other, and prints each
run and the median of every column over the runs. One process is not enough: within a process the ratio
holds steady from its first thousand steps to its last, but between processes running the same code it
moves by several percent either way (on this 2-vCPU machine the light step's device part read 0.96 in
one process and 1.02 in the next; likely where TensorFlow's buffers land, which touches the plain step as
much as ours). The median over processes is what a user should expect; the spread is in the rows above it.

The private attributes it reads (``_instrumentation``, ``_next_step``) are the callback's internals:
this is a measuring instrument, not an example.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras
import numpy as np
import tensorflow as tf

from bench._service import free_port, running_service
from bench.client_overhead import cnn, mlp
from nanwatch.keras import NanWatchCallback

WARM_UP = 40  # steps of each arm before the timed ones (traces; the auto stride's first choice)


def instrumented(
    build: Any, url: str, name: str, inline: bool = False, guard: bool = True
) -> tuple[Any, Any, Any, Any]:
    """A fresh model's plain step, its callback (installed), a dataset iterator and its instrumented step.

    Each step is what ``fit``'s loop does per batch: the batch-begin hooks, the train function, the
    batch-end hooks, through a ``keras.callbacks.CallbackList`` with ``History`` as ``fit`` builds it
    (without the callback, Keras dispatches the batch-end hooks on a worker thread, as in a plain
    ``fit``). ``inline``: the callback's records are made on the training thread.
    """
    keras.utils.set_random_seed(0)
    model, x, y, batch = build()
    model.fit(x[: 2 * batch], y[: 2 * batch], batch_size=batch, verbose=0)  # build the optimizer
    iterator = iter(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).repeat())
    model.make_train_function(force=True)
    plain = fit_step(model.train_function, keras.callbacks.CallbackList(None, add_history=True, model=model))
    plain.callbacks.on_train_begin()
    callback = NanWatchCallback(url, run_id=f"step-overhead-{name}", halt_on="never", guard=guard)
    if inline:
        monitor = callback.monitor
        monitor.log_step_later = lambda step, make, **kw: monitor.log_step(step, **make())
    callbacks = keras.callbacks.CallbackList([callback], add_history=True, model=model)
    callbacks.on_train_begin()  # installs the instrumented train function(s)
    assert callback._instrumentation is not None and callback._instrumentation.schedule.auto
    return plain, callback, iterator, fit_step(model.train_function, callbacks)


def light_only(callback: Any, run: Any) -> None:
    """``run()`` with the callback's schedule holding its detail step back (it stays due for the next call)."""
    schedule = callback._instrumentation.schedule
    due, schedule.next_detail = schedule.next_detail, 1 << 62
    try:
        run()
    finally:
        schedule.next_detail = due


def fit_step(function: Any, callbacks: Any) -> Any:
    """One step as ``fit`` runs it, with ``callbacks`` (a ``CallbackList``; the step keeps it as
    ``.callbacks``, whose ``on_train_begin`` and ``on_train_end`` the caller calls)."""

    def step(index: int, iterator: Any) -> None:
        callbacks.on_train_batch_begin(index)
        callbacks.on_train_batch_end(index, function(iterator))

    step.callbacks = callbacks  # type: ignore[attr-defined]
    return step


def measure(build: Any, url: str, steps: int, inline: bool, graph: bool = False, guard: bool = False) -> dict[str, Any]:
    plain, callback, iterator, watched = instrumented(build, url, build.__name__)
    arms = {
        "plain": lambda step: plain(step, iterator),
        "watched": lambda step: watched(step, iterator),
    }
    insts = {"watched": callback._instrumentation, "graph": callback._instrumentation}
    if graph:  # the instrumented train function's light steps, with the plain arm's hooks
        graph_only = fit_step(callback.model.train_function, plain.callbacks)
        arms["graph"] = lambda step: light_only(callback, lambda: graph_only(step, iterator))
    started = [plain, watched]
    if guard:  # a second copy without the guard, with its own plain arm
        plain2, unguarded_cb, iterator2, unguarded = instrumented(
            build, url, f"{build.__name__}-unguarded", guard=False
        )
        arms["plain2"] = lambda step: plain2(step, iterator2)
        arms["unguarded"] = lambda step: unguarded(step, iterator2)
        insts["unguarded"] = unguarded_cb._instrumentation
        started += [plain2, unguarded]
    if inline:
        other_plain, _, other_iterator, other_watched = instrumented(build, url, f"{build.__name__}-inline", True)
        arms["inline"] = lambda step: other_watched(step, other_iterator)
        started += [other_plain, other_watched]
    inst = callback._instrumentation
    assert inst is not None
    names = list(arms)
    for step in range(WARM_UP):  # trace and warm up every arm
        for name in names:
            arms[name](step)
    times = {name: np.zeros(steps) for name in names}
    details = {name: np.zeros(steps, dtype=bool) for name in names}  # the instrumented arms share a counter
    chosen = []  # the auto stride after each round
    for i in range(steps):
        for name in names[i % len(names) :] + names[: i % len(names)]:  # the order rotates
            arm_inst = insts.get(name, inst)
            arm_inst.last_detail = False
            start = time.perf_counter()
            arms[name](i)
            times[name][i] = time.perf_counter() - start
            details[name][i] = arm_inst.last_detail
        chosen.append(inst.schedule.stride)
    for step in started:
        step.callbacks.on_train_end()  # restores the models, closes the monitors
    base = float(np.median(times["plain"]))
    detail = details["watched"]
    result = {
        "plain_ms": 1e3 * base,
        "light": float(np.median(times["watched"][~detail])) / base,
        "detail": float(np.median(times["watched"][detail])) / base,
        "all_median": float(np.median(times["watched"])) / base,
        "k_auto": len(chosen) / sum(1 / k for k in chosen),  # the detail steps' rate over the run, as a stride
        "k_range": f"{min(chosen)}-{max(chosen)}",
    }
    if inline:
        result["inline_median"] = float(np.median(times["inline"])) / base
    if graph:
        result["graph"] = float(np.median(times["graph"][~details["graph"]])) / base
    if guard:
        detail2 = details["unguarded"]
        result["unguarded"] = float(np.median(times["unguarded"][~detail2])) / float(np.median(times["plain2"]))
        result["guard"] = result["light"] - result["unguarded"]
    return result


STRIDES = (1, 10, 20, 50)
COLUMNS = (
    "light", "detail", "all_median", *(f"k={k}" for k in STRIDES), "auto", "inline_median", "graph", "unguarded",
    "guard",
)  # fmt: skip


def with_means(r: dict[str, Any]) -> dict[str, Any]:
    """``r`` with the mean overhead at each stride of ``STRIDES`` and at the auto stride (``auto``)."""

    def mean(k: float) -> float:  # every k-th step a detail one
        return float(((k - 1) * r["light"] + r["detail"]) / k)

    return {**r, **{f"k={k}": mean(k) for k in STRIDES}, "auto": mean(r["k_auto"])}


def child(args: argparse.Namespace, url: str) -> list[dict[str, Any]]:
    """One run: the measurements of every model in a fresh process (this one, or a child's JSON lines)."""
    if args.runs == 1:
        return [
            {"model": name, **with_means(measure({"mlp": mlp, "cnn": cnn}[name], url, args.steps, args.inline_records,
                                                  args.graph, args.guard))}
            for name in args.models.split(",")
        ]  # fmt: skip
    command = [sys.executable, __file__, "--runs", "1", "--child", url, "--steps", str(args.steps)]
    command += ["--models", args.models] + ["--inline-records"] * args.inline_records + ["--graph"] * args.graph
    command += ["--guard"] * args.guard
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=3600).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def row(name: str, r: dict[str, Any], args: argparse.Namespace) -> str:
    k = f"{r['k_range']} ({r['k_auto']:.0f})" if "k_range" in r else ""
    return (
        f"  {name:<10}{r['plain_ms']:>10.3f}{r['light']:>8.3f}{r['detail']:>8.3f}{r['all_median']:>8.3f}   "
        + "".join(f"{r[f'k={k}']:>8.3f}" for k in STRIDES)
        + f"{k:>14}{r['auto']:>8.3f}"
        + (f"{r['inline_median']:>16.3f}" if args.inline_records else "")
        + (f"{r['graph']:>16.3f}" if args.graph else "")
        + (f"{r['unguarded']:>11.3f}{r['guard']:>+8.3f}" if args.guard else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per model (1: this one)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--inline-records", action="store_true", help="add the arm that unpacks on the training thread")
    parser.add_argument("--no-service", action="store_true", help="nothing listens at the callback's URL")
    parser.add_argument("--graph", action="store_true", help="add the arm without the callback's hooks")
    parser.add_argument("--guard", action="store_true", help="add a copy without the guard (its cost)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a run of the parent's: the URL; prints JSON lines
    args = parser.parse_args()
    logging.getLogger("nanwatch").setLevel(logging.ERROR)
    if args.child:
        for result in child(args, args.child):
            print(json.dumps(result))
        return
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, {args.steps} steps of each arm, interleaved, "
          f"{args.runs} run(s)")  # fmt: skip
    print(
        f"  {'model':<10}{'plain ms':>10}{'light':>8}{'detail':>8}{'median':>8}   "
        + "".join(f"{'k=' + str(k):>8}" for k in STRIDES)
        + f"{'k auto':>14}{'auto':>8}"
        + ("   inline median" if args.inline_records else "")
        + ("   graph (light)" if args.graph else "")
        + ("  unguarded   guard" if args.guard else "")
    )
    service = contextlib.nullcontext(f"http://127.0.0.1:{free_port()}") if args.no_service else running_service()
    runs: list[list[dict[str, Any]]] = []
    with service as url:
        for i in range(args.runs):
            runs.append(child(args, url))
            for r in runs[-1]:
                print(row(f"{r['model']} #{i + 1}" if args.runs > 1 else r["model"], r, args), flush=True)
    if args.runs > 1:
        for name in args.models.split(","):
            results = [r for run in runs for r in run if r["model"] == name]
            median = {c: float(np.median([r[c] for r in results])) for c in (*COLUMNS, "plain_ms") if c in results[0]}
            print(row(f"{name} med", median, args))


if __name__ == "__main__":
    main()
