"""``NanWatchCallback``: stream a Keras ``fit`` to the nanwatch service and stop it when it must stop."""

from __future__ import annotations

import logging
import math
import operator
from typing import Any, Final

import keras
from keras import tree

from nanwatch import protocol
from nanwatch.keras import _recovery
from nanwatch.keras._instrument import Instrumentation
from nanwatch.keras._recovery import Recovery
from nanwatch.monitor import Halt, Monitor
from nanwatch.vocabulary import HaltPolicy


class NanWatchCallback(keras.callbacks.Callback):  # type: ignore[misc]  # keras ships no type hints
    """Report every training step's numerics to nanwatch and halt ``fit`` on its command.

    ``model.fit(x, y, callbacks=[NanWatchCallback("http://127.0.0.1:8000", run_id="resnet-lr3e-4")])``

    Per step it sends the batch's own loss (not Keras' running mean), the learning rate, the global and
    per-layer gradient norms (unscaled under mixed precision), ``grad_mean_abs``, weight and update norms
    and per-layer activation statistics; under a ``LossScaleOptimizer`` also the loss scale and whether
    the step was skipped (a skipped step's gradients are not sent: they are the scaler's overflow, not
    the model's). All of it is reduced on the device inside the training step, written to one variable
    and read as one small vector per step; the training thread only copies that vector and checks its
    loss and gradient norm, and the monitor's sender thread unpacks it into the record. The layer table
    is the watched layers in the order the forward pass reaches them (nested models flattened into their
    layers; layers that only select or move values, such as max pooling and Flatten, are not watched:
    see ``_layers.watched_layers``).

    Cost. Every step: one ``l2_loss`` per gradient and one ``sum`` per layer output (enough to name any
    NaN/Inf at the step it appears and to watch gradient growth), plus ``max`` and ``min`` per output
    under float16/bfloat16, whose overflow headroom is small; one small vector handed back with the
    step's own outputs. On some steps (``activation_stride``) also the detail statistics:
    max-abs activations of float32 runs, weight and update norms, mean |g|, activation std and fractions,
    and on a detail step with a non-finite output the share of non-finite entries and the statistics of
    the finite ones. Under a stride the step is traced twice (a light and a detail train function; the
    callback picks one per step), so nothing of the details runs on the other steps.
    ``bench/RESULTS.md`` has the measured overhead; ``activation_stride=1`` buys per-step details at
    several times the cost, ``activation_stats=False`` drops the layer outputs altogether.

    The guard (``guard=True``, the default): an update whose gradients or learning rate are not finite
    is not applied at all (weights and optimizer state unchanged, ``_guard``); the record says
    ``skipped`` and the service's ``nonfinite`` finding names the layer, so a run halted for it keeps
    every weight finite. Its cost is one condition in the step (``bench/RESULTS.md``).

    Recovery (``recover=True``): a host copy of the weights and optimizer variables every
    ``snapshot_every`` steps; a halt the service's detectors decide (the policy ``halt_on``) is answered by
    rolling back to that copy, multiplying the learning rate by ``lr_factor`` (a schedule's output) and
    going on with the next batch, at most ``max_recoveries`` times, then by halting. Each recovery is an
    event on the run (``GET /v1/runs/{id}/events``, detector ``recovery``) and ``cb.recoveries`` lists
    them; ``cb.halted`` stays None for a run that recovered. See ``_recovery`` and the README.

    Args:
        url, run_id, token, name, team: as for :class:`nanwatch.Monitor` (``url`` defaults to
            ``$NANWATCH_URL``); ignored when ``monitor`` is given.
        halt_on: the run's policy, ``"critical"``, ``"warning"`` or ``"never"``. Unless ``"never"``, a
            non-finite loss or gradient stops ``fit`` at that very step without asking the service
            (with ``recover=True``: after asking it, at most ``lockstep_timeout`` seconds, for the halt
            that recovery answers).
        guard: keep non-finite updates out of the weights (see above).
        recover, snapshot_every, lr_factor, max_recoveries: recovery (see above).
        activation_stats: measure layer outputs (wraps each layer's ``call``; the statistics come from
            the training step's own forward pass, never a second one).
        activation_stride: ``"auto"`` (the default) or k: how often to take the detail statistics. With
            k, every k-th step (global step a multiple of k). ``"auto"`` takes them at the first step,
            then times the steps and spaces the detail steps so that what they add stays within 0.5 %
            of the training time, every 10th step at most and every 100th at least (``_stride``): on a
            GPU that is every 10th step, on a 2-vCPU CPU every ~30th-50th for small models. The detail
            statistics: ``act_std``,
            ``act_frac_zero``, ``act_frac_saturated``, ``act_frac_zero_var``, ``grad_mean_abs``,
            ``weight_norm`` and ``update_norm`` (the other steps run a train function without their
            reductions, and their records leave those fields out; in float32 runs
            without sigmoid/tanh/softmax layers ``act_max_abs`` and ``in_max_abs`` too). Every step
            still carries the loss, learning rate, global and per-layer gradient norms, ``act_mean`` and
            ``act_frac_nonfinite``, so no non-finite value is missed: a weight that turned non-finite
            shows in that step's outputs and gradients. On the steps between, a layer output holding
            NaN/Inf shows as its NaN or ±Inf ``act_mean`` and an ``act_frac_nonfinite`` of NaN (non-finite
            entries, their share not measured there); the service names the layer all the same.
            Gradient norms are taken in float32 without a second, scale-safe pass (it would keep every
            gradient referenced and cost the optimizer its in-place updates): a norm above ~2.6e19,
            whose square overflows, reads as +Inf; so does a weight norm above ~1.8e19 (the safe pass
            would cost a ``tf.cond``).
        lockstep: wait at each batch end, at most ``lockstep_timeout`` seconds and never while the service
            is unreachable, for the service's verdict on this step (:meth:`nanwatch.Monitor.sync`), so a
            detector's halt lands at the very step that earned it. Off by default: the training step then
            never waits, and a halt arrives as soon as the asynchronous reply does (a few steps later
            when steps take milliseconds). Worth it when a step costs far more than a loopback round trip.
        save_on_halt: a path; on a halt the model is saved there first (``model.save``, or
            ``save_weights`` for a ``.weights.h5`` path; ``{step}`` in it is replaced by the step).
        monitor: an existing :class:`nanwatch.Monitor` to use (it is not closed at the end of ``fit``).
        monitor_kwargs: further :class:`nanwatch.Monitor` arguments (``timeout``, ``flush_interval``, ...).

    After ``fit``: ``cb.halted`` is None or the :class:`nanwatch.Halt` that stopped it; everything the
    callback patched is restored and the monitor it made is flushed and closed (within the monitor's
    ``timeout``). If ``fit`` raises, Keras skips ``on_train_end``: call :meth:`restore` yourself.

    ``steps_per_execution=k``: Keras calls the batch hooks once per k steps, so one record covers the k
    steps and carries the last one's step number: loss and mean-type statistics are means over the k
    steps, norms and max-abs values their maximum, ``act_frac_nonfinite`` the maximum (non-zero if any
    step had a non-finite output), weight norms and the learning rate the last step's. A halt can then
    take effect only at the end of the chunk.

    ``tf.distribute.MirroredStrategy``: the statistics are replica 0's; gradient norms are taken inside
    ``optimizer.apply``, before the all-reduce, so they are per-replica gradients.
    """

    def __init__(
        self,
        url: str | None = None,
        run_id: str | None = None,
        *,
        token: str | None = None,
        halt_on: str = HaltPolicy.CRITICAL,
        activation_stats: bool = True,
        activation_stride: int | str = "auto",
        save_on_halt: str | None = None,
        guard: bool = True,
        recover: bool = False,
        snapshot_every: int = 100,
        lr_factor: float = 0.5,
        max_recoveries: int = 3,
        lockstep: bool = False,
        lockstep_timeout: float = 1.0,
        monitor: Monitor | None = None,
        name: str | None = None,
        team: str | None = None,
        **monitor_kwargs: Any,
    ) -> None:
        super().__init__()
        if recover:
            _recovery.check(snapshot_every, lr_factor, max_recoveries)
        self.activation_stats = bool(activation_stats)
        self.activation_stride = _stride_of(activation_stride)
        self.save_on_halt = save_on_halt
        self.guard = bool(guard)
        self.lockstep, self.lockstep_timeout = bool(lockstep), float(lockstep_timeout)
        self.halted: Halt | None = None
        self.recoveries: list[dict[str, Any]] = []  # each recovery's details, as reported to the service
        self._recovery_options: dict[str, Any] | None = (
            {"every": snapshot_every, "factor": lr_factor, "max_recoveries": max_recoveries} if recover else None
        )
        self._recovery: Recovery | None = None
        self._log: logging.Logger = monitor_kwargs.get("logger") or logging.getLogger("nanwatch")
        self._monitor_args: dict[str, Any] = {
            "url": url, "run_id": run_id, "token": token, "halt_on": halt_on, "name": name, "team": team,
            "framework": "keras", "register": False, **monitor_kwargs,
        }  # fmt: skip
        self._owns_monitor = monitor is None
        self.monitor: Monitor = monitor if monitor is not None else Monitor(**self._monitor_args)
        self._closed = False
        self._instrumentation: Instrumentation | None = None
        self._step: int | None = None
        self._registered = -1
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ Keras hooks

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.restore()  # a previous fit that raised left its patches in place
        self.halted = None
        if self._closed:
            self._monitor_args["run_id"] = self.monitor.run_id
            self.monitor, self._closed = Monitor(**self._monitor_args), False
        if self._step is None:
            self._step = _initial_step(self.model)
        if self._recovery_options is not None and _unsupported(self.model) is None:
            if self._recovery is None or self._recovery.model is not self.model:
                self._recovery = Recovery(self.model, **self._recovery_options)
            self._recovery.install()  # before the step is traced
        self._instrumentation = self._instrument()
        # under recovery a halt that falls due may be answered by a recovery: say "halting" only on a stop
        self.monitor.announce_halts = self._recovery is None
        if self._recovery is not None:
            self._recovery.snapshot(before_step=self._step)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        assert self._step is not None
        inst = self._instrumentation
        if inst is None:  # not measurable: count steps and obey the service
            step, self._step = self._step, self._step + 1
            halt, finite = self.monitor.log_step(step), True
        else:
            step, halt, finite = self._log_step(inst)
        recovery = self._recovery
        snapshot = recovery is not None and finite and recovery.due(step)
        halt = halt or self._verdict(step, finite, snapshot)
        if halt is not None:
            self._answer(halt, step)
        elif snapshot and recovery is not None:
            recovery.snapshot(before_step=step + 1)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.restore()
        if self._owns_monitor and not self._closed:
            self._closed = True
            self.monitor.close(timeout=self.monitor.timeout)

    # ------------------------------------------------------------------ public

    def restore(self) -> None:
        """Undo every patch this callback made to the model and its optimizer (idempotent)."""
        inst, self._instrumentation = self._instrumentation, None
        if inst is not None:
            inst.restore()
        if self._recovery is not None:
            self._recovery.restore()

    # ------------------------------------------------------------------ helpers

    def _instrument(self) -> Instrumentation | None:
        reason = _unsupported(self.model)
        if reason is not None:
            self._warn_once("unsupported", "nanwatch: %s; only the service's halts are applied", reason)
            return None
        inst = Instrumentation(
            self.model,
            activation_stats=self.activation_stats,
            activation_stride=self.activation_stride,
            guard=self.guard,
            logger=self._log,
            warned=self._warned,
        )
        inst.install()
        inst.set_step(self._step or 0)
        return inst

    def _log_step(self, inst: Instrumentation) -> tuple[int, Halt | None, bool]:
        """Log the last step vector; return its (last) step, a halt due there, and whether its loss and
        global gradient norm were finite.

        The training thread only copies the vector and checks its loss and global gradient norm: the
        sender thread unpacks it into the record (about 0.1 ms of numpy and Python per step, 1 % of the
        benchmark MLP's step). A step whose loss or gradient norm is not finite is unpacked here, for the
        local non-finite check to name what is wrong (under recovery the service names it instead).
        """
        assert self._step is not None
        vec = inst.read()
        self._register(inst)
        count, loss, grad_norm = inst.head(vec)
        step, self._step = self._step + count - 1, self._step + count
        unpack = inst.unpacker(vec)
        finite = math.isfinite(loss) and math.isfinite(grad_norm)  # and per layer
        if finite or self.monitor.halt_on == HaltPolicy.NEVER or self._recovery is not None:
            return step, self.monitor.log_step_later(step, unpack), finite
        return step, self.monitor.log_step(step, **unpack()), finite

    def _register(self, inst: Instrumentation) -> None:
        if len(inst.observed) != self._registered:
            self._registered = len(inst.observed)
            self.monitor.register(
                layers=inst.table(), dtype_policy=_dtype_policy(self.model), stable_loss=_stable_loss(self.model)
            )

    def _verdict(self, step: int, finite: bool, snapshot: bool) -> Halt | None:
        """The service's halt for ``step`` where the callback waits for it (``lockstep_timeout`` at most):
        in lockstep, and under recovery before a snapshot (a copy only of a state the service passed) and
        after a non-finite step, which halts here when the service has no halt for recovery to answer."""
        recovering = self._recovery is not None
        if not (self.lockstep or (recovering and (snapshot or not finite))):
            return None
        halt = self.monitor.sync(step, timeout=self.lockstep_timeout)
        if halt is None and recovering and not finite and self.monitor.halt_on != HaltPolicy.NEVER:
            reason = f"non-finite loss or gradient norm at step {step}, and no halt from the service to recover from"
            return Halt(reason, step, "client")
        return halt

    def _answer(self, halt: Halt, step: int) -> None:
        """Recover from a detector's halt while recoveries are left; otherwise stop."""
        recovery = self._recovery
        if recovery is None or halt.source != "detector" or not recovery.left:
            self._stop(halt)
            return
        details = recovery.roll_back(step)
        message = recovery.describe(step, details)
        self.monitor.report_event(step, "recovery", message, command_id=halt.command_id or "", **details)
        self.recoveries.append({"step": step, "reason": halt.reason, **details})
        self._log.warning("nanwatch: run %s: %s (for: %s)", self.monitor.run_id, message, halt.reason)

    def _stop(self, halt: Halt) -> None:
        self.halted = halt
        if not self.monitor.announce_halts:
            self.monitor.announce(halt)
        if self.save_on_halt:
            self._save(str(self.save_on_halt).replace("{step}", str(halt.step)))
        self.model.stop_training = True

    def _save(self, path: str) -> None:
        try:
            if path.endswith(".weights.h5"):
                self.model.save_weights(path)
            else:
                self.model.save(path)
        except Exception as exc:  # a failed save must not keep a dying job running
            self._log.error("nanwatch: could not save the model to %s before halting: %s", path, exc)
        else:
            self._log.warning("nanwatch: saved the model to %s before halting", path)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._log.warning(message, *args)


def _stride_of(value: Any) -> int | str:
    if isinstance(value, str) and value == "auto":
        return "auto"
    try:
        stride = operator.index(value) if not isinstance(value, bool) else 0
    except TypeError:
        stride = 0
    if stride < 1:
        raise ValueError(f'nanwatch: activation_stride must be "auto" or an int >= 1, got {value!r}')
    return stride


def _unsupported(model: Any) -> str | None:
    if keras.backend.backend() != "tensorflow":
        return f"nanwatch.keras measures training only on the TensorFlow backend, not {keras.backend.backend()}"
    if not isinstance(model, keras.Model) or getattr(model, "optimizer", None) is None:
        return "the model is not a compiled Keras 3 model (tf_keras/Keras 2 models are not supported)"
    return None


def _initial_step(model: Any) -> int:
    """Where this run's step numbers start: the optimizer's iteration count (0 for a fresh model)."""
    try:
        return int(model.optimizer.iterations.numpy())
    except (AttributeError, TypeError, ValueError):
        return 0


_STABLE_LOSSES: Final = frozenset(
    {
        keras.losses.binary_crossentropy,
        keras.losses.categorical_crossentropy,
        keras.losses.sparse_categorical_crossentropy,
        keras.losses.binary_focal_crossentropy,
        keras.losses.categorical_focal_crossentropy,
    }
)


def _stable_loss(model: Any) -> bool:
    """Whether every loss ``model`` was compiled with is a built-in cross-entropy, which clips probabilities
    before taking their log (or takes logits): a probability of exactly 0 or 1 cannot make it non-finite.
    Losses given as other functions or ``Loss`` subclasses, or none (a custom ``train_step``), are not."""
    losses = [loss for loss in tree.flatten(getattr(model, "loss", None)) if loss is not None]
    return bool(losses) and all(_is_stable(loss) for loss in losses)


def _is_stable(loss: Any) -> bool:
    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except ValueError:
            return False
    return getattr(loss, "fn", loss) in _STABLE_LOSSES  # a built-in Loss class wraps its function as .fn


def _dtype_policy(model: Any) -> str:
    policy = getattr(getattr(model, "dtype_policy", None), "name", None) or keras.config.dtype_policy().name
    return policy if policy in protocol.DTYPE_POLICIES else "float32"
