"""``GET /v1/runs/{run_id}/series``: the downsampled history the run page plots."""

from __future__ import annotations

from tests.conftest import Service
from tests.web.runs import DIVERGES_AT, NAN_AT, stream


def test_series_of_a_diverging_run_keep_its_nan_and_inf_as_marks_and_forecast_it(service: Service) -> None:
    stream(service.client, "div", 400, diverging=True, halt_on="never")
    fields = "loss,grad_norm,layers.grad_norm,layers.act_max_abs,steps_to_nonfinite"
    body = service.client.get("/v1/runs/div/series", params={"fields": fields, "points": 50, "top": 2}).json()
    assert (body["rows"], body["first_step"], body["last_step"]) == (400, 0, 399)
    series = body["series"]
    loss = series["loss"]
    assert len(loss["steps"]) <= 100 and loss["nan"] and min(loss["nan"]) == NAN_AT
    layers = series["layers.grad_norm"]
    assert [layer["name"] for layer in layers] == ["dense", "out"]  # NaN first, then +Inf; the no-weights layer is out
    assert layers[0]["nan"][0] == NAN_AT and layers[1]["inf"][0] == NAN_AT
    activations = series["layers.act_max_abs"][0]
    assert activations["dtype"] == "float32" and activations["limit"] > 3e38
    forecast = series["steps_to_nonfinite"]
    assert forecast["steps"] and DIVERGES_AT <= forecast["steps"][0] < NAN_AT and 0.0 in forecast["values"]


def test_a_later_start_gives_the_same_forecast_as_the_whole_history(service: Service) -> None:
    stream(service.client, "div", 400, diverging=True, halt_on="never")
    params = {"fields": "steps_to_nonfinite", "points": 1000}
    whole = service.client.get("/v1/runs/div/series", params=params).json()["series"]["steps_to_nonfinite"]
    tail = service.client.get("/v1/runs/div/series", params={**params, "start": 305}).json()["series"]
    pairs = list(zip(whole["steps"], whole["values"], strict=True))
    assert list(zip(tail["steps_to_nonfinite"]["steps"], tail["steps_to_nonfinite"]["values"], strict=True)) == [
        (s, v) for s, v in pairs if s >= 305
    ]


def test_bad_series_queries_are_refused_with_the_field_named(service: Service) -> None:
    stream(service.client, "ok", 5, diverging=False)
    response = service.client.get("/v1/runs/ok/series", params={"fields": "loss,gradnorm"})
    assert response.status_code == 422 and "gradnorm" in response.text and "layers.grad_norm" in response.text
    assert service.client.get("/v1/runs/ok/series", params={"points": 0}).status_code == 422
    missing = service.client.get("/v1/runs/nobody/series")
    assert missing.status_code == 404 and "not registered" in missing.json()["detail"]


def test_an_empty_run_has_empty_series(service: Service) -> None:
    stream(service.client, "fresh", 0, diverging=False)
    body = service.client.get("/v1/runs/fresh/series", params={"fields": "loss,layers.grad_norm"}).json()
    assert body["rows"] == 0 and "first_step" not in body
    assert body["series"]["loss"] == {"steps": [], "values": [], "nan": [], "inf": [], "-inf": []}
    assert body["series"]["layers.grad_norm"] == []  # no layer has reported yet
