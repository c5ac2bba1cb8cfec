"""Synthetic runs and step records for the detector tests, decoded through the real wire protocol."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from nanwatch import protocol
from nanwatch_service.detectors import Finding, Pipeline

DENSE_RELU = {"kind": "Dense", "activation": "relu", "params": 16512}


def layer(name: str, kind: str = "Dense", activation: str | None = None, params: int = 1000) -> dict[str, Any]:
    """One row of a layer table."""
    return {"name": name, "kind": kind, "activation": activation, "params": params}


def relu_mlp(depth: int = 4, *, out: str | None = "sigmoid") -> list[dict[str, Any]]:
    """Dense/ReLU layers, a Dropout (no weights) after the first, and a Dense output."""
    layers = [layer(f"dense_{i}", activation="relu", params=16512) for i in range(depth)]
    layers.insert(1, layer("dropout", kind="Dropout", params=0))
    return [*layers, layer("out", activation=out, params=129)]


class Run:
    """A registered run and a factory for its healthy step records, with per-field overrides."""

    def __init__(
        self, layers: Sequence[Mapping[str, Any]], dtype_policy: str = "float32", seed: int = 0, **fields: Any
    ) -> None:
        self.spec = protocol.decode_run({"name": "t", "dtype_policy": dtype_policy, "layers": list(layers), **fields})
        self.layers = self.spec["layers"]
        self.rng = random.Random(seed)
        self.noise = 0.0

    def index(self, name: str) -> int:
        """Position of a layer in the table."""
        return [layer["name"] for layer in self.layers].index(name)

    def record(
        self,
        step: int,
        *,
        layers: Mapping[str, Mapping[str, float]] | None = None,
        drop: Iterable[str] = (),
        **scalars: Any,
    ) -> dict[str, Any]:
        """A healthy decoded record; ``layers`` = {field: {layer name: value}} overrides, ``drop`` omits
        fields (scalar or per-layer), ``scalars`` override loss, grad_norm, loss_scale, skipped…"""
        arrays = self._healthy_arrays()
        for field, values in (layers or {}).items():
            for name, value in values.items():
                arrays[field][self.index(name)] = value
        raw: dict[str, Any] = {"step": step, "loss": self._jitter(0.7), "lr": 1e-3, "grad_norm": self._jitter(1.0)}
        raw.update(scalars)
        raw["layers"] = {k: v for k, v in arrays.items() if k not in set(drop)}
        for name in drop:
            raw.pop(name, None)
        record: dict[str, Any] = protocol.decode_record(raw, n_layers=len(self.layers))
        return record

    def _jitter(self, value: float) -> float:
        return value * math.exp(self.rng.gauss(0.0, self.noise)) if self.noise else value

    def _healthy_arrays(self) -> dict[str, list[float]]:
        arrays: dict[str, list[float]] = {field: [] for field in protocol.LAYER_FIELDS}
        for spec in self.layers:
            for field, value in _healthy_layer(spec).items():
                arrays[field].append(self._jitter(value) if value else value)
        return arrays

    def records(self, n: int, start: int = 0, **per_step: Callable[[int], Any]) -> list[dict[str, Any]]:
        """``n`` healthy records; each keyword maps a scalar name to a function of the step."""
        return [self.record(step, **{k: f(step) for k, f in per_step.items()}) for step in range(start, start + n)]


def _healthy_layer(spec: Mapping[str, Any]) -> dict[str, float]:
    weighted = spec["params"] > 0
    activation = spec["activation"]
    probability = activation in ("sigmoid", "softmax")
    return {
        "grad_norm": 0.1 if weighted else 0.0,
        "grad_mean_abs": 1e-4 if weighted else 0.0,
        "weight_norm": 10.0 if weighted else 0.0,
        "update_norm": 0.01 if weighted else 0.0,
        "act_mean": 0.2,
        "act_std": 0.5,
        "act_max_abs": 0.9 if probability else 3.0,
        "act_frac_zero": 0.5 if activation == "relu" else 0.0,
        "act_frac_nonfinite": 0.0,
        "act_frac_saturated": 0.0,
        "act_frac_zero_var": 0.0,
        "in_max_abs": 3.0,
    }


def run_all(run: Run, records: Sequence[Mapping[str, Any]], batch: int = 50, **options: Any) -> list[Finding]:
    """Findings of a fresh pipeline over ``records`` fed in batches of ``batch``."""
    pipeline = Pipeline(run.spec, **options)
    findings: list[Finding] = []
    for i in range(0, len(records), batch):
        findings += pipeline.process(records[i : i + batch])
    return findings


def of(findings: Iterable[Finding], detector: str, severity: str | None = None) -> list[Finding]:
    """The findings of one detector (and severity)."""
    return [f for f in findings if f.detector == detector and (severity is None or f.severity == severity)]


def first_step(findings: Iterable[Finding], *severities: str) -> int | None:
    """Step of the first finding of these severities (all when none given)."""
    return min((f.step for f in findings if not severities or f.severity in severities), default=None)
