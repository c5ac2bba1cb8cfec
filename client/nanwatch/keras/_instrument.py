"""Instrumenting a compiled Keras model for one ``fit``: what is patched, what the patches record, restoring.

Four instance attributes are wrapped, none rewritten; each wrapper calls the original:

- ``layer.call`` of every watched layer: remembers the layer's output and inputs, in the order the
  forward pass reaches them (that order is the layer table);
- ``model.compute_loss``: remembers the batch's own loss (``train_step`` calls it via ``_compute_loss``);
- ``optimizer.apply`` (``apply_gradients`` calls it): remembers the gradients, the learning rate, the
  loss scale and each weight just before and just after the update, and runs the update under the guard
  (``_guard``: not at all when it would be non-finite);
- ``model.train_step``: brackets one step; after it, what was remembered becomes the step vector (see
  ``_trace`` and ``_vector``). The step returns it as one more output beside its logs, which a wrapper of
  ``model.train_function`` takes out before Keras sees the logs: the callback then reads an output the
  step already produced instead of running an eager variable read (about 0.1 ms per step on CPU). Under
  ``steps_per_execution > 1`` (steps fold into one vector) and with several replicas (Keras would average
  them), the vector is assigned to a pre-created variable instead and read from there.

Under an ``activation_stride`` other than 1 Keras' train function is built twice from the wrapped step
(``_train_function``, the only use of Keras' private API): a light one that measures only the every-step
statistics, and a detail one; the wrapper of ``train_function`` calls the detail one on the steps its
``_stride.Schedule`` picks (every k-th, or under ``"auto"`` as often as their measured extra time allows)
and times the calls for it. Nothing of the details is then in the light step's graph (an in-graph switch
would leave ``tf.cond``s, a step counter and the untaken branch's ops in every step: about 1.5 % of a short
CPU step). The price is a second trace of the step when ``fit`` starts. Under ``steps_per_execution > 1``,
whose steps run inside one call, an in-graph step counter chooses instead (every k-th step; "auto" keeps
its first stride, 10).

The reductions are added where their tensors are made (a layer's output in its ``call``, the gradients
before the update), so no big tensor lives longer because of nanwatch. All of this happens while
TensorFlow traces the step: it costs nothing per step beyond the ops it adds. The wrappers record only
inside the training step's own graph (not in evaluate/predict traces, not inside a layer's inner loop
such as an RNN cell's ``while_loop``, which is measured at the RNN layer). Layers that only select their
input's values (``_layers.selects_only``) are not measured: their ``call`` only passes on which watched
layer made what they output.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from nanwatch.keras import _activations, _guard, _layers, _reductions, _stride, _trace, _train_function, _vector
from nanwatch.keras._trace import Details

_MISSING = object()
_VECTOR_KEY = "__nanwatch_step_vector__"  # the step's extra output, removed before Keras sees the logs


class Instrumentation:
    """The patches and device variables of one model's instrumented ``fit``."""

    def __init__(
        self,
        model: keras.Model,
        *,
        activation_stats: bool,
        activation_stride: int | str,
        guard: bool,
        logger: logging.Logger,
        warned: set[str] | None = None,
    ) -> None:
        self.model = model
        self.optimizer = model.optimizer
        self.activation_stats = activation_stats
        self.guard = guard
        self._serial = _guard.Serial()
        self.schedule = _stride.Schedule(activation_stride)
        self.stride = self.schedule.stride  # the in-graph counter's (chunks), fixed when traced
        self._log = logger
        self._warned = warned if warned is not None else set()
        self.candidates = _layers.watched_layers(model)
        self.passing = [layer for layer in _layers.all_layers(model) if _layers.selects_only(layer)]
        self.layout = _vector.Layout(len(self.candidates))
        self.observed: list[keras.Layer] = []  # watched layers in forward order; index = column
        self._slot: dict[int, int] = {}
        self._bounds = {id(layer): _layers.bounds(layer) for layer in self.candidates}
        self._patched: list[tuple[Any, str, Any]] = []
        self._trace: _trace.StepTrace | None = None
        self.chunked = int(getattr(model, "steps_per_execution", 1) or 1) > 1
        self.lso = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        self.loss_scaled = self.lso or getattr(self.optimizer, "loss_scale_factor", None) is not None
        self.stats, self.step = self._make_variables()
        self.tops = _tops_every_step(model, self._bounds.values())  # besides detail steps (every step at stride 1)
        self._vector: Any = None  # the step vector the last train_function call returned, if it did
        # the main train function's details: every step (stride 1), none (the host calls a second, detail
        # function on detail steps), or an in-graph counter's pick (chunks, whose steps run inside one call)
        split = not self.chunked and _train_function.can_build(model)
        self.details = Details.EVERY if self.stride == 1 else Details.NONE if split else Details.COUNTED
        self._next_step = 0  # the global step of the next train_function call (host-decided details)
        self.last_detail = False  # whether the last train_function call took the details
        self._timing: tuple[float, bool] | None = None  # (called at, detail) of a call to time, if any
        self._traced: set[bool] = set()  # the kinds of train function called once (traced) so far

    # ------------------------------------------------------------------ install / restore

    def install(self) -> None:
        """Wrap the layers, loss, optimizer and train step, and make Keras retrace the step."""
        if self.activation_stats:
            for layer in self.candidates:
                self._patch(layer, "call", self._wrap_call(layer, layer.call))
            for layer in self.passing:
                self._patch(layer, "call", self._wrap_passing(layer.call))
        self._patch(self.model, "compute_loss", self._wrap_loss(self.model.compute_loss))
        self._patch(self.optimizer, "apply", self._wrap_apply(self.optimizer.apply))
        if self.guard and not self.lso:
            self._patch(self.optimizer, "update_step", self._serial.wrap(self.optimizer.update_step))
        step = self.model.train_step
        if self.details is Details.NONE:  # Keras' own train function around each variant of the wrapped step
            light = _train_function.build(self.model, self._wrap_step(step, Details.NONE))
            detailed = _train_function.build(self.model, self._wrap_step(step, Details.EVERY))
            _train_function.install(self.model, self._wrap_function(light, detailed))
        else:
            self._patch(self.model, "train_step", self._wrap_step(step, self.details))
            _train_function.install(self.model, self._wrap_function(_train_function.rebuild(self.model), None))

    def restore(self) -> None:
        """Undo every patch (idempotent) and drop the instrumented step so the next fit retraces."""
        while self._patched:
            obj, name, previous = self._patched.pop()
            if previous is _MISSING:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, previous)
        _train_function.rebuild(self.model)

    def _patch(self, obj: Any, name: str, wrapper: Any) -> None:
        self._patched.append((obj, name, obj.__dict__.get(name, _MISSING)))
        setattr(obj, name, wrapper)

    def _make_variables(self) -> tuple[tf.Variable, tf.Variable]:
        # ONLY_FIRST_REPLICA: under a MirroredStrategy the record is replica 0's view of the step.
        with self.model.distribute_strategy.scope():
            kwargs = {"trainable": False, "aggregation": tf.VariableAggregation.ONLY_FIRST_REPLICA}
            stats = tf.Variable(tf.zeros([self.layout.size]), name="nanwatch_stats", **kwargs)
            step = tf.Variable(tf.constant(0, tf.int64), name="nanwatch_step", **kwargs)
        return stats, step

    # ------------------------------------------------------------------ host side

    def read(self) -> np.ndarray:
        """The step vector of the last ``train_function`` call; starts a new chunk."""
        returned, self._vector = self._vector, None
        timing, self._timing = self._timing, None
        if timing is not None:  # the vector is read once the step has run: time it (``_stride``)
            self.schedule.timed(time.perf_counter() - timing[0], timing[1])
        if returned is not None:
            return np.asarray(returned)
        vec = np.array(self.stats.numpy())  # a copy: the variable is reset below and written next step
        if self.chunked:
            self.stats.assign(tf.zeros([self.layout.size]))
        return vec

    def head(self, vec: np.ndarray) -> tuple[int, float, float]:
        """The number of steps ``vec`` covers, its loss and its global gradient norm (Python values)."""
        head = self.layout.head(vec)
        return max(int(head[_vector.STEPS]), 1), head[_vector.LOSS], head[_vector.GRAD_NORM]

    def unpacker(self, vec: np.ndarray) -> Callable[[], dict[str, Any]]:
        """What turns ``vec`` into ``Monitor.log_step`` keyword arguments (on the monitor's sender thread)."""
        n, layout = len(self.observed), self.layout
        options = {"loss_scale": self.loss_scaled, "skips": self.lso or self.guard}
        return lambda: layout.unpack(vec, n, **options)

    def set_step(self, step: int) -> None:
        """The global step of the next training step (drives ``activation_stride``)."""
        self._next_step = step
        self.schedule.start(step)
        if self.details is Details.COUNTED:
            self.step.assign(step)

    def table(self) -> list[dict[str, Any]]:
        """The layer table: the observed layers in forward order."""
        return _layers.table(self.observed, self.model.trainable_variables)

    def warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._log.warning(message, *args)

    # ------------------------------------------------------------------ wrappers

    def _wrap_call(self, layer: keras.Layer, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            outputs = original(*args, **kwargs)
            trace = self._trace
            if trace is not None:
                self._observe(trace, layer, args[:1], outputs)
            return outputs

        return call

    def _wrap_passing(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """A layer that only selects its input's values (not watched): its output counts as made by the
        watched layer that made its input, for the next layer's ``in_max_abs``."""

        def call(*args: Any, **kwargs: Any) -> Any:
            outputs = original(*args, **kwargs)
            trace = self._trace
            if trace is not None:
                source = _layers.first_tensor(args[:1])
                output = _layers.first_tensor(outputs)
                if source is not None and output is not None and id(source) in trace.producers:
                    trace.producers[id(output)] = trace.producers[id(source)]
                    trace.passed.append(output)  # alive while its id is a key
            return outputs

        return call

    def _observe(self, trace: _trace.StepTrace, layer: keras.Layer, args: tuple[Any, ...], outputs: Any) -> None:
        output = _layers.first_tensor(outputs)
        if output is None or not trace.owns(output) or self._slot.get(id(layer)) in trace.seen:
            return  # not a tensor of this graph, or a shared layer's second call (the first one counts)
        if id(layer) not in self._slot:
            self._slot[id(layer)] = len(self.observed)
            self.observed.append(layer)
        slot = self._slot[id(layer)]
        inputs = [t for t in tf.nest.flatten(args) if isinstance(t, tf.Tensor) and trace.owns(t)]
        sources = tuple(trace.producers[id(t)] for t in inputs if id(t) in trace.producers)
        own = [t for t in inputs if id(t) not in trace.producers]
        detail = trace.detail is True
        tops = self.tops or detail  # a detail step takes max and min anyway: here, not twice
        trace.pending.append(_reductions.Observed.of(slot, output, own, self._bounds[id(layer)], sources, tops, detail))
        trace.seen.add(slot)
        trace.producers[id(output)] = slot

    def _wrap_loss(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def compute_loss(*args: Any, **kwargs: Any) -> Any:
            loss = original(*args, **kwargs)
            trace = self._trace
            if trace is not None and loss is not None and trace.owns(loss):
                replicas = tf.distribute.get_strategy().num_replicas_in_sync
                trace.loss = loss * replicas if replicas > 1 else loss  # undo Keras' per-replica scaling
                trace.settle()  # the forward pass is over: measure its outputs before the backward pass
            return loss

        return compute_loss

    def _wrap_apply(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def apply(grads: Any, trainable_variables: Any = None) -> Any:
            trace = self._trace
            if trace is None or trace.applied:
                return original(grads, trainable_variables)
            variables = list(trainable_variables) if trainable_variables is not None else None
            if variables is None or not trace.current():
                self.warn_once("apply", "nanwatch: %s.apply was called in a way nanwatch cannot follow "
                               "(without variables, or inside a tf.cond); gradients are not reported",
                               type(self.optimizer).__name__)  # fmt: skip
                return original(grads, trainable_variables)
            guarded = self.guard and not self.lso and _guard.available()
            grads = self._before_apply(trace, list(grads), variables, ordered=not guarded)
            if trace.grads is not None and guarded:
                trace.updated = _guard.finite_update(trace.grads.squares, trace.lr)
                self._serial.start()
                _guard.apply_if(trace.updated, lambda: original(grads, trainable_variables))
                result = None  # Keras' apply returns nothing
            else:
                self._warn_unguarded()
                result = original(grads, trainable_variables)
            if trace.detail is not False:  # weight and update norms are detail statistics
                trace.new = [tf.convert_to_tensor(v) for v in variables]
            return result

        return apply

    def _before_apply(
        self, trace: _trace.StepTrace, grads: list[Any], variables: list[Any], *, ordered: bool
    ) -> list[Any]:
        """Measure the gradients and read the weights before the update; return the gradients to apply.

        ``ordered``: each gradient reaches the optimizer only after its own reduction (under the guard it
        waits for all of them anyway), and nothing else of ours reads it (no scale-safe ``tf.cond``, see
        ``_reductions.gradient_stats``): then the optimizer's element-wise ops reuse the gradient's buffer
        in place as they do without nanwatch. On CPU a fresh buffer
        per op (an mmap and its page faults above 128 KiB) costs far more than the reduction; measured on
        the benchmark MLP, either a shared reference or a barrier before all updates doubled the overhead.
        """
        trace.applied = True
        slots = _layers.owners(self.observed, variables)
        present = [g for g in grads if g is not None]
        trace.slots = [s for g, s in zip(grads, slots, strict=True) if g is not None]
        trace.old = None if trace.detail is False else self._read_old(variables, trace.detail)
        trace.weight_slots = slots
        trace.lr = tf.cast(self.optimizer.learning_rate, tf.float32)
        # the loss scale this step uses is read before the update, and the guard's tf.cond must not make variables
        _train_function.build_optimizer(self.optimizer, variables)
        if self.lso:
            trace.scale = tf.convert_to_tensor(self.optimizer.dynamic_scale)
        elif getattr(self.optimizer, "loss_scale_factor", None) is not None:
            trace.scale = tf.constant(float(self.optimizer.loss_scale_factor))
        if not present:
            return grads
        trace.grads = _reductions.gradient_stats(present, trace.detail, safe=False)
        if not ordered:
            return grads
        squares = iter(trace.grads.squares)
        return [_after(g, next(squares)) if g is not None else g for g in grads]

    def _read_old(self, variables: list[Any], detail: Any) -> list[Any]:
        """The weights before the update (auto control dependencies order the read before it).

        Holding them across the update costs a copy of every weight (the optimizer's in-place update
        must copy a buffer that is still referenced), so under a stride they are read only on detail
        steps, inside a ``tf.cond`` (empty tensors on the other steps). XLA has no such copy and wants
        static shapes: there, and without a stride, the weights are read on every step.
        """
        if detail is True or self.model.jit_compile:
            return [tf.convert_to_tensor(v) for v in variables]
        empty = [tf.zeros([0] * len(v.shape), v.dtype) for v in variables]
        return list(tf.cond(detail, lambda: [tf.identity(v) for v in variables], lambda: empty))

    def _warn_unguarded(self) -> None:
        if self.guard and not self.lso and not _guard.available():
            self.warn_once("guard", "nanwatch: %s cannot update under a tf.cond; the guard is off and a "
                           "non-finite update reaches the weights", tf.distribute.get_strategy())  # fmt: skip

    def _wrap_function(self, original: Callable[..., Any], detailed: Callable[..., Any] | None) -> Callable[..., Any]:
        """Keras' train function(s): ``detailed``, when given, runs instead of ``original`` on the steps
        ``schedule`` picks (and the call is timed for it); the step vector is taken out of the logs."""

        def train_function(iterator: Any) -> Any:
            step, self._next_step = self._next_step, self._next_step + 1
            detail = detailed is not None and self.schedule.due(step)
            self.last_detail = detail
            if detailed is not None:
                self.schedule.ran(step, detail)
                self._timing = (time.perf_counter(), detail) if detail in self._traced else None
                self._traced.add(detail)
            logs = (detailed if detailed is not None and detail else original)(iterator)
            if isinstance(logs, dict) and _VECTOR_KEY in logs:
                logs = dict(logs)
                self._vector = logs.pop(_VECTOR_KEY)
            return logs

        return train_function

    def _wrap_step(self, original: Callable[..., Any], details: Details) -> Callable[..., Any]:
        """The recording train step, measuring the details on the steps ``details`` says."""

        def train_step(data: Any) -> Any:
            eager = tf.executing_eagerly()
            trace = _trace.StepTrace(graph=None if eager else tf.compat.v1.get_default_graph(), eager=eager)
            trace.detail = details.in_step(self.step, self.stride)
            self._trace = trace
            try:
                logs = original(data)
            finally:
                self._trace = None
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            returned = isinstance(logs, dict) and not self.chunked and replicas == 1
            vector = self._record(trace)
            if returned:
                return {**logs, _VECTOR_KEY: vector}
            self.stats.assign(vector)
            return logs

        return train_step

    # ------------------------------------------------------------------ the step vector

    def _record(self, trace: _trace.StepTrace) -> tf.Tensor:
        self._warn_missing(trace)
        trace.settle()
        inputs = _reductions.StepInputs(
            grads=trace.grads, grad_slots=trace.slots, new=trace.new, old=trace.old if trace.applied else None,
            weight_slots=trace.weight_slots or (), scale=trace.scale,
            activations=trace.activations,
        )  # fmt: skip
        raw = _reductions.read(inputs, trace.detail, safe=False)  # see _reductions.read and _before_apply
        values = {
            "loss": tf.cast(trace.loss, tf.float32) if trace.loss is not None else tf.constant(0.0),
            "lr": trace.lr if trace.lr is not None else tf.constant(0.0),
            "detail": tf.cast(trace.detail, tf.float32),
            "previous": self.stats.read_value() if self.chunked else tf.zeros([0]),
            "act_tops": tf.reduce_max(trace.activations.parts[:, _activations.PARTS.index("tops")])
            if trace.activations is not None
            else tf.constant(0.0),
        }
        plan = _reductions.Plan.of(inputs, self.layout.slots)
        if not isinstance(trace.detail, bool):
            self.step.assign_add(1)
        return _trace.step_vector(trace, plan, raw, values, self.layout, lso=self.lso, fold=self.chunked)

    def _warn_missing(self, trace: _trace.StepTrace) -> None:
        model = type(self.model).__name__
        if trace.loss is None:
            self.warn_once("loss", "nanwatch: %s.train_step does not call compute_loss(); the batch loss is not "
                           "reported (logs['loss'] is the epoch's running mean, not the batch's)", model)  # fmt: skip
        if not trace.applied:
            self.warn_once("grads", "nanwatch: %s.train_step does not call optimizer.apply_gradients() or "
                           "apply(); gradients, weights and updates are not reported", model)  # fmt: skip


def _after(grad: Any, reduction: tf.Tensor) -> Any:
    """``grad``, released to its consumers only once ``reduction`` has read it."""
    if not isinstance(grad, tf.Tensor):
        return grad
    with tf.control_dependencies([reduction]):
        return tf.identity(grad)


def _tops_every_step(model: keras.Model, bounds: Any) -> bool:
    """Whether max and min of every layer output are wanted on every step, not only with the details.

    Under float16/bfloat16 the overflow headroom is small, and a sigmoid/tanh/softmax output's top
    probability creeps toward exactly 1 between batches (bench S6: sampled every 10th step it is missed).
    A float32 model without such a layer has neither concern, and its largest outputs come with the
    details (and on any step holding a non-finite value).
    """
    compute = str(getattr(getattr(model, "dtype_policy", None), "compute_dtype", "float32"))
    return compute in ("float16", "bfloat16") or any(b is not None for b in bounds)
