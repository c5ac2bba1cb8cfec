"""vanishing_gradient, update_ratio and loss_scale."""

from __future__ import annotations

from nanwatch_service.detectors import Pipeline

from .records import Run, layer, of, relu_mlp


def test_vanishing_gradient_in_an_early_layer_warns() -> None:
    run = Run(relu_mlp(4))
    record = run.record(0, layers={"grad_mean_abs": {"dense_0": 1e-9}})
    [finding] = of(Pipeline(run.spec).process([record]), "vanishing_gradient")
    assert (finding.severity, finding.layer, finding.threshold) == ("warning", "dense_0", 1e-7)
    assert "BatchNormalization" in finding.remedy


def test_uniformly_tiny_gradients_of_a_converged_model_are_not_vanishing() -> None:
    run = Run(relu_mlp(3))
    tiny = {name: 1e-9 for name in ("dense_0", "dense_1", "dense_2", "out")}
    assert of(Pipeline(run.spec).process([run.record(0, layers={"grad_mean_abs": tiny})]), "vanishing_gradient") == []


def test_layers_without_weights_and_embeddings_are_not_vanishing() -> None:
    run = Run([layer("emb", kind="Embedding", params=10**6), *relu_mlp(2)])
    record = run.record(0, layers={"grad_mean_abs": {"emb": 1e-10, "dropout": 0.0}})
    assert of(Pipeline(run.spec).process([record]), "vanishing_gradient") == []


def test_update_as_large_as_the_weights_it_started_from_warns() -> None:
    run = Run(relu_mlp(3))
    records = [
        run.record(0),
        run.record(1, layers={"update_norm": {"dense_1": 25.0}, "weight_norm": {"dense_1": 30.0}}),
    ]
    [finding] = of(Pipeline(run.spec).process(records), "update_ratio")
    assert (finding.step, finding.layer, finding.value) == (1, "dense_1", 2.5)  # 25 / the previous 10
    assert "learning rate" in finding.remedy


def test_update_ratio_with_no_previous_record_uses_the_current_weights() -> None:
    run = Run(relu_mlp(3))
    record = run.record(0, layers={"update_norm": {"dense_1": 25.0}})
    [finding] = of(Pipeline(run.spec).process([record]), "update_ratio")
    assert finding.value == 2.5


def test_update_of_zero_initialized_weights_is_not_a_ratio() -> None:
    run = Run(relu_mlp(3))
    records = [run.record(0, layers={"weight_norm": {"out": 0.0}}), run.record(1, layers={"update_norm": {"out": 0.5}})]
    assert [f.step for f in of(Pipeline(run.spec).process(records), "update_ratio")] == []


def test_small_updates_are_quiet() -> None:
    run = Run(relu_mlp(3))
    assert of(Pipeline(run.spec).process(run.records(30)), "update_ratio") == []


def mixed_run() -> Run:
    return Run(relu_mlp(3), dtype_policy="mixed_float16")


def scaled(run: Run, step: int, scale: float, skipped: bool) -> dict[str, object]:
    return run.record(step, loss_scale=scale, skipped=skipped, grad_norm=float("inf") if skipped else 1.0)


def test_start_up_halvings_of_the_initial_loss_scale_are_normal() -> None:
    run = mixed_run()
    records = [scaled(run, s, 32768.0 / 2 ** (s + 1), True) for s in range(6)]
    records += [scaled(run, s, 512.0, False) for s in range(6, 40)]
    assert Pipeline(run.spec).process(records) == []


def test_one_skipped_step_in_a_while_is_normal() -> None:
    run = mixed_run()
    records = [scaled(run, s, 1024.0 if s < 20 else 512.0, s == 20) for s in range(40)]
    assert Pipeline(run.spec).process(records) == []


def test_repeated_halvings_after_training_started_warn() -> None:
    run = mixed_run()
    records = [scaled(run, s, 1024.0, False) for s in range(10)]
    records += [scaled(run, 10 + k, 1024.0 / 2 ** (k + 1), True) for k in range(4)]
    found = of(Pipeline(run.spec).process(records), "loss_scale")
    assert [f.step for f in found] == [12, 13]
    assert "keep the loss scaler on" in found[0].remedy


def test_loss_scale_under_one_warns() -> None:
    run = mixed_run()
    records = [scaled(run, s, 0.5, False) for s in range(3)]
    found = of(Pipeline(run.spec).process(records), "loss_scale")
    assert [(f.step, f.value, f.threshold) for f in found] == [(0, 0.5, 1.0), (1, 0.5, 1.0), (2, 0.5, 1.0)]


def test_no_loss_scale_no_loss_scale_findings() -> None:
    run = mixed_run()
    records = [run.record(s, skipped=True) for s in range(20)]
    assert of(Pipeline(run.spec).process(records), "loss_scale") == []
