"""Small builders for service tests: run registrations and step records."""

from __future__ import annotations

from typing import Any

import httpx

from nanwatch import protocol

LAYERS = [
    {"name": "dense", "kind": "Dense", "activation": "relu", "params": 330},
    {"name": "my_custom_layer", "kind": "MyCustomLayer", "activation": None, "params": 0},
    {"name": "out", "kind": "Dense", "activation": "sigmoid", "params": 31},
]


def healthy_layers(n: int = 3) -> dict[str, list[float]]:
    """Unremarkable per-layer statistics for ``n`` layers."""
    return {
        "grad_norm": [0.1] * n,
        "grad_mean_abs": [0.01] * n,
        "weight_norm": [1.0] * n,
        "update_norm": [0.001] * n,
        "act_mean": [0.2] * n,
        "act_std": [0.5] * n,
        "act_max_abs": [2.0] * n,
        "act_frac_zero": [0.1] + [0.0] * (n - 1),  # only the ReLU layer has exact zeros
        "act_frac_nonfinite": [0.0] * n,
        "act_frac_saturated": [0.0] * n,
        "act_frac_zero_var": [0.0] * n,
        "in_max_abs": [1.5] * n,
    }


def record(step: int, loss: float = 0.5, **layer_overrides: list[float]) -> dict[str, Any]:
    """A healthy step record with optional per-layer overrides."""
    layers = healthy_layers()
    layers.update(layer_overrides)
    return {
        "step": step,
        "wall_time": 1_700_000_000.0 + step,
        "loss": loss,
        "lr": 1e-3,
        "grad_norm": 0.2,
        "layers": layers,
    }


def register(client: httpx.Client, run_id: str, **fields: Any) -> httpx.Response:
    """PUT a run with the test layer table."""
    body = {"name": run_id, "team": "vision", "framework": "test", "layers": LAYERS, **fields}
    response = client.put(f"/v1/runs/{run_id}", json=body)
    assert response.status_code in (200, 201), response.text
    return response


def post_steps(
    client: httpx.Client,
    run_id: str,
    records: list[dict[str, Any]],
    *,
    content_type: str = protocol.MSGPACK,
    **batch: Any,
) -> httpx.Response:
    """POST a batch in the given encoding; return the raw response."""
    body = {"protocol": 1, "attempt": batch.pop("attempt", "a1"), "records": records, **batch}
    return client.post(
        f"/v1/runs/{run_id}/steps",
        content=protocol.dumps(body, content_type),
        headers={"Content-Type": content_type, "Accept": content_type},
    )


def reply(response: httpx.Response) -> Any:
    """Decode a response in whatever encoding it came."""
    assert response.status_code < 300, response.text
    content_type = protocol.content_type_of(response.headers.get("content-type"))
    return protocol.loads(response.content, content_type)
