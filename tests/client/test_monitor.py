"""Monitor's behaviour against a real HTTP service on 127.0.0.1 (the fake one in conftest.py)."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from nanwatch import Halt, Monitor, ProtocolError, protocol
from tests.conftest import free_port

if TYPE_CHECKING:
    from tests.client.conftest import FakeService, LogCapture

MakeMonitor = Callable[..., Monitor]
WARNING = 30
ERROR = 40
INFO = 20

LAYERS = [
    {"name": "dense", "kind": "Dense", "activation": "relu", "params": 12},
    {"name": "norm", "kind": "LayerNormalization", "activation": None, "params": 8},
    {"name": "head", "kind": "Dense", "activation": "softmax", "params": 5},
]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def step_until(
    monitor: Monitor, done: Callable[[Halt | None], bool], start: int = 0, what: str = "it"
) -> tuple[int, list[Halt]]:
    """Log steps from ``start`` on, as a slow training loop would, until ``done(halt)``; return next step."""
    halts: list[Halt] = []
    deadline = time.monotonic() + 10
    step = start
    while time.monotonic() < deadline:
        halt = monitor.log_step(step, loss=1.0, grad_norm=0.5)
        halts += [halt] if halt is not None else []
        step += 1
        if done(halt):
            return step, halts
        time.sleep(0.005)
    pytest.fail(f"timed out after 10 s logging steps waiting for {what}")


def same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


# ---------------------------------------------------------------------- delivery


LOSSES = [0.25, math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]


@pytest.mark.parametrize("content_type", [protocol.MSGPACK, protocol.JSON])
def test_records_arrive_in_order_with_nonfinite_values_intact(
    fake_service: FakeService, make_monitor: MakeMonitor, content_type: str
) -> None:
    monitor = make_monitor(fake_service.url, content_type=content_type, halt_on="never", layers=LAYERS)
    acts = np.array([math.nan, 1.5, math.inf], dtype=np.float32)
    for step in range(40):
        loss = LOSSES[step % len(LOSSES)]
        grad_norm = np.float32(step / 4)
        monitor.log_step(step, loss=loss, grad_norm=grad_norm, lr=1e-3, layers={"act_max_abs": acts}, wall_time=step)
    monitor.close()

    records = fake_service.records("run-a")
    assert [r["step"] for r in records] == list(range(40))
    assert all(same_float(r["loss"], LOSSES[r["step"] % len(LOSSES)]) for r in records)
    assert all(r["grad_norm"] == r["step"] / 4 for r in records)
    assert all(r["lr"] == 1e-3 and r["wall_time"] == r["step"] for r in records)
    sent = acts.tolist()
    assert all(same_float(a, b) for r in records for a, b in zip(r["layers"]["act_max_abs"], sent, strict=True))
    assert {r.headers["content-type"] for r in fake_service.seen()} == {content_type}


def test_records_logged_later_are_made_on_the_sender_thread_in_order(
    fake_service: FakeService, make_monitor: MakeMonitor
) -> None:
    monitor = make_monitor(fake_service.url, layers=LAYERS)
    built_on: list[str] = []

    def build(step: int) -> dict[str, Any]:
        built_on.append(threading.current_thread().name)
        grad_norm = np.full(3, step, np.float32)
        return {"loss": step / 8, "lr": 0.5, "skipped": step == 4, "layers": {"grad_norm": grad_norm}}

    for step in range(30):
        if step % 3:
            assert monitor.log_step_later(step, lambda step=step: build(step), wall_time=step) is None
        else:
            monitor.log_step(step, loss=step / 8, lr=0.5, wall_time=step)
    monitor.close()

    records = fake_service.records("run-a")
    assert [r["step"] for r in records] == list(range(30))
    assert all(r["loss"] == r["step"] / 8 and r["lr"] == 0.5 and r["wall_time"] == r["step"] for r in records)
    later = [r for r in records if r["step"] % 3]
    assert all(r["layers"] == {"grad_norm": [float(r["step"])] * 3} for r in later)
    assert [r["step"] for r in records if r.get("skipped")] == [4]
    assert len(built_on) == 20 and set(built_on) == {"nanwatch-sender"}


def test_a_record_logged_later_that_cannot_be_made_is_dropped_counted_and_logged_once(
    fake_service: FakeService, make_monitor: MakeMonitor, logs: LogCapture
) -> None:
    monitor = make_monitor(fake_service.url)

    def build(step: int) -> dict[str, Any]:
        if step in (4, 7):
            raise ValueError(f"no vector for step {step}")
        return {"loss": 1.0, "layers": {"act_mean": [0.5]}} if step != 9 else {"lost": 1.0}

    for step in range(12):
        monitor.log_step_later(step, lambda step=step: build(step))
    monitor.close()

    assert fake_service.steps() == [0, 1, 2, 3, 5, 6, 8, 10, 11]
    assert monitor.dropped == 3 == fake_service.batches()[-1]["dropped"]
    [error] = logs.messages(ERROR)
    assert "step 4 of run run-a could not be made" in error and "no vector for step 4" in error


def test_log_step_later_returns_the_services_halt_but_skips_the_local_check(
    fake_service: FakeService, make_monitor: MakeMonitor
) -> None:
    command_id = fake_service.queue_command("run-a", source="detector", reason="grad_explosion", at_step=1000)
    monitor = make_monitor(fake_service.url)
    step_until(monitor, lambda _: fake_service.client_has_read(command_id), what="delivery")
    # documented: a record logged later is not looked at on the training thread
    assert monitor.log_step_later(999, lambda: {"loss": math.nan, "grad_norm": math.inf}) is None
    halt = monitor.log_step_later(1000, lambda: {"loss": 1.0})
    monitor.close()

    assert halt == Halt("grad_explosion", 1000, "detector", command_id, 1000) == monitor.halted
    [nan_step] = [r for r in fake_service.records("run-a") if r["step"] == 999]
    assert math.isnan(nan_step["loss"]) and math.isinf(nan_step["grad_norm"])
    with pytest.raises(ProtocolError, match="step"):
        monitor.log_step_later(-1, dict)


def test_registration_is_sent_before_the_first_batch_and_again_after_register(
    fake_service: FakeService, make_monitor: MakeMonitor
) -> None:
    monitor = make_monitor(fake_service.url, name="mlp", team="vision")
    step, _ = step_until(monitor, lambda _: bool(fake_service.batches()), what="a first batch")
    monitor.register(layers=[{**LAYERS[0], "params": np.int64(12)}], dtype_policy="mixed_float16")
    step_until(monitor, lambda _: len(fake_service.seen("PUT")) == 2, start=step, what="a second PUT")
    monitor.close()

    first, second = (r.body for r in fake_service.seen("PUT"))
    assert fake_service.seen()[0].method == "PUT"
    assert first is not None and second is not None
    assert first["layers"] == [] and first["name"] == "mlp" and first["team"] == "vision"
    assert second["layers"] == [LAYERS[0]] and second["dtype_policy"] == "mixed_float16"
    assert second["name"] == "mlp" and second["framework"] == "custom" and second["halt_on"] == "critical"


def test_buffered_records_are_delivered_when_the_service_comes_back(
    start_fake_service: Callable[[int], FakeService], make_monitor: MakeMonitor, logs: LogCapture
) -> None:
    port = free_port()
    monitor = make_monitor(f"http://127.0.0.1:{port}")
    step, _ = step_until(monitor, lambda _: bool(logs.messages(WARNING)), what="the unreachable warning")
    service = start_fake_service(port)
    step_until(monitor, lambda _: step in service.steps(), start=step, what="the buffered records")
    monitor.close()

    assert service.steps() == sorted(set(service.steps()))
    assert service.steps()[: step + 1] == list(range(step + 1))
    assert logs.messages(INFO)[-1].endswith("(0 records dropped meanwhile)")
    assert "reachable again" in logs.messages(INFO)[-1]


def test_full_buffer_drops_oldest_records_and_reports_the_count(
    start_fake_service: Callable[[int], FakeService], make_monitor: MakeMonitor
) -> None:
    port = free_port()
    monitor = make_monitor(f"http://127.0.0.1:{port}", buffer_size=10)
    for step in range(25):
        monitor.log_step(step, loss=1.0)
    wait_for(lambda: monitor.dropped == 15, "15 dropped records")
    service = start_fake_service(port)
    wait_for(lambda: len(service.records()) == 10, "the 10 records kept")
    monitor.close()

    assert service.steps() == list(range(15, 25))
    assert [batch["dropped"] for batch in service.batches()] == [15] * len(service.batches())
    assert service.batches()[-1]["final"] is True


def test_malformed_batch_refused_with_422_is_dropped_not_retried(
    fake_service: FakeService, make_monitor: MakeMonitor, logs: LogCapture
) -> None:
    fake_service.forced_statuses.append(422)
    monitor = make_monitor(fake_service.url)
    step, _ = step_until(monitor, lambda _: bool(fake_service.seen("POST")), what="the refused batch")
    step_until(monitor, lambda _: len(fake_service.batches()) >= 3, start=step, what="three accepted batches")
    monitor.close()

    refused = fake_service.seen("POST")[0]
    assert refused.status == 422 and refused.body is not None
    refused_steps = [r["step"] for r in refused.body["records"]]
    assert not set(refused_steps) & set(fake_service.steps())
    assert fake_service.steps() == list(range(len(refused_steps), fake_service.steps()[-1] + 1))
    assert monitor.dropped == len(refused_steps) == fake_service.batches()[-1]["dropped"]
    assert [r.status for r in fake_service.seen("POST")].count(422) == 1
    [error] = logs.messages(ERROR)
    assert "forced 422 by the test" in error and "run-a" in error


def test_lost_run_404_triggers_reregistration_and_loses_no_records(
    fake_service: FakeService, make_monitor: MakeMonitor, logs: LogCapture
) -> None:
    monitor = make_monitor(fake_service.url, layers=LAYERS)
    step, _ = step_until(monitor, lambda _: bool(fake_service.batches()), what="a first batch")
    fake_service.forget("run-a")
    step, _ = step_until(monitor, lambda _: any(r.status == 404 for r in fake_service.seen()), start=step, what="a 404")
    step_until(monitor, lambda _: len(fake_service.seen("PUT")) == 2, start=step, what="re-registration")
    monitor.close()

    puts = fake_service.seen("PUT")
    assert puts[1].body is not None and puts[1].body["layers"] == LAYERS
    assert fake_service.steps() == list(range(fake_service.steps()[-1] + 1))
    assert logs.messages(WARNING) == [] and logs.messages(ERROR) == []


def test_close_flushes_every_buffered_batch(fake_service: FakeService, make_monitor: MakeMonitor) -> None:
    monitor = make_monitor(fake_service.url, flush_interval=30, max_batch=100)
    for step in range(3000):
        monitor.log_step(step, loss=1.0, layers={"act_std": [0.5] * 16})
    monitor.close(timeout=30)

    assert fake_service.steps() == list(range(3000))
    assert [batch["final"] for batch in fake_service.batches()][-1] is True
    assert max(len(batch["records"]) for batch in fake_service.batches()) == 100


def test_context_manager_sends_final_and_stops_its_sender(fake_service: FakeService, logs: LogCapture) -> None:
    before = set(threading.enumerate())
    with Monitor(fake_service.url, "run-ctx", logger=logs.logger) as monitor:
        sender = next(t for t in set(threading.enumerate()) - before if t.name == "nanwatch-sender")
        for step in range(3):
            monitor.log_step(step, loss=1.0)

    assert sender.daemon and not sender.is_alive()
    assert fake_service.steps("run-ctx") == [0, 1, 2]
    finals = [batch["final"] for batch in fake_service.batches("run-ctx")]
    assert finals[-1] is True and finals.count(True) == 1
    monitor.close()  # idempotent
    assert len(fake_service.batches("run-ctx")) == len(finals)


# ---------------------------------------------------------------------- an absent or hanging service


def test_unreachable_service_warns_once_and_close_is_bounded(make_monitor: MakeMonitor, logs: LogCapture) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monitor = make_monitor(url)
    step, halts = step_until(monitor, lambda _: bool(logs.messages(WARNING)), what="the warning")
    retries_done = time.monotonic() + 2.0  # backoff 0.5 s, 1 s, ...: let a few retries fail
    step, more = step_until(monitor, lambda _: time.monotonic() > retries_done, start=step)
    started = time.monotonic()
    monitor.close(timeout=0.5)
    closing_took = time.monotonic() - started

    assert halts == more == []
    [warning, undelivered] = logs.messages(WARNING)
    assert warning.startswith(f"nanwatch: service at {url} unreachable (")
    assert warning.endswith("); buffering up to 10000 records, training continues")
    assert f"with {step} records not delivered" in undelivered
    assert closing_took < 5.0  # generous: the bound is 0.5 s


def test_an_outage_leaves_the_sender_asleep_until_its_next_retry(make_monitor: MakeMonitor, logs: LogCapture) -> None:
    """With the service away the buffer stays full; logging a step must not wake the sender (it would find
    it has to keep waiting, and on a 2-vCPU machine each wake cost the training thread ~25 µs)."""
    monitor = make_monitor(f"http://127.0.0.1:{free_port()}", max_batch=4, buffer_size=8)
    step, _ = step_until(monitor, lambda _: bool(logs.messages(WARNING)), what="the unreachable warning")
    checks = 0
    check = monitor._outbox.flush_due

    def counted() -> bool:
        nonlocal checks
        checks += threading.current_thread() is monitor._sender.thread  # the sender re-checks after each wake
        return check()

    monitor._outbox.flush_due = counted  # type: ignore[method-assign]
    for later in range(step, step + 300):  # ~0.3 s: the backoff (0.5 s, 1 s, ...) wakes it once or twice
        monitor.log_step(later, loss=1.0)
        time.sleep(0.001)

    assert checks < 30, f"the sender woke {checks} times for 300 steps"
    assert monitor.dropped >= 300 - 8


def read_request(connection: socket.socket) -> bytes:
    """Read one whole HTTP request (headers and a Content-Length body) from ``connection``."""
    data = b""
    while b"\r\n\r\n" not in data or len(data) < _request_length(data):
        chunk = connection.recv(65536)
        assert chunk, "the client closed the connection"
        data += chunk
    return data


def _request_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    return len(head) + 4 + int(lengths[0])


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A port that accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        yield listener


def test_log_step_does_not_wait_for_a_request_in_flight(
    silent_listener: socket.socket, make_monitor: MakeMonitor
) -> None:
    port = silent_listener.getsockname()[1]
    monitor = make_monitor(f"http://127.0.0.1:{port}", timeout=60)
    monitor.log_step(0, loss=1.0)
    connection, _ = silent_listener.accept()
    with connection:
        connection.settimeout(10)
        assert read_request(connection).startswith(b"PUT /v1/runs/run-a ")  # waiting for an answer now
        halts = [monitor.log_step(step, loss=1.0, layers={"grad_norm": [1.0] * 64}) for step in range(1, 2000)]
        connection.setblocking(False)
        with pytest.raises(BlockingIOError):
            connection.recv(1)  # the client has not given up either: the request is still in flight
        monitor.close(timeout=0.2)
    assert halts == [None] * 1999
    monitor._sender.thread.join(10)  # the connection is closed now: the sender's request fails and it stops
    assert not monitor._sender.thread.is_alive()


# ---------------------------------------------------------------------- halts


def test_service_halt_yields_one_halt_and_is_acked_in_a_later_batch(
    fake_service: FakeService, make_monitor: MakeMonitor, logs: LogCapture
) -> None:
    fake_service.keep_acked_commands = True  # the service repeats it: the client must apply it once
    command_id = fake_service.queue_command("run-a", reason="operator: lr too high", step=3)
    monitor = make_monitor(fake_service.url)
    next_step, halts = step_until(monitor, lambda halt: halt is not None, what="the halt")
    posts_then = len(fake_service.seen("POST"))
    _, later = step_until(monitor, lambda _: len(fake_service.seen("POST")) > posts_then + 3, start=next_step)
    monitor.close()

    at = next_step - 1
    assert halts == [Halt("operator: lr too high", at, "operator", command_id, None)]
    assert later == [] and monitor.halted == halts[0]
    assert fake_service.acks() == [{"id": command_id, "step": at}]
    assert fake_service.batches()[-1]["records"][-1]["step"] > at  # records after the halt still arrive
    assert logs.messages(WARNING) == [f"nanwatch: halting run run-a at step {at}: operator: lr too high (operator)"]


def test_halt_with_future_at_step_stops_exactly_there(fake_service: FakeService, make_monitor: MakeMonitor) -> None:
    command_id = fake_service.queue_command("run-a", source="detector", reason="grad_explosion", at_step=1000)
    monitor = make_monitor(fake_service.url)
    step, halts = step_until(monitor, lambda _: fake_service.client_has_read(command_id), what="delivery")
    assert halts == [] and step < 999
    assert monitor.log_step(999, loss=1.0) is None
    halt = monitor.log_step(1000, loss=1.0)
    monitor.close()

    assert halt == Halt("grad_explosion", 1000, "detector", command_id, 1000)
    assert fake_service.acks() == [{"id": command_id, "step": 1000}]
    assert fake_service.steps()[-1] == 1000


def test_commands_reach_only_their_own_run(fake_service: FakeService, make_monitor: MakeMonitor) -> None:
    fake_service.queue_command("run-b", reason="only b")
    first, second = make_monitor(fake_service.url, "run-a"), make_monitor(fake_service.url, "run-b")
    step, halts = step_until(second, lambda halt: halt is not None, what="run-b's halt")
    assert [first.log_step(s, loss=1.0) for s in range(step + 5)] == [None] * (step + 5)
    first.close()
    second.close()

    assert first.halted is None and halts[0].reason == "only b"
    assert first.attempt != second.attempt
    assert fake_service.acks("run-a") == [] and len(fake_service.acks("run-b")) == 1


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"loss": math.nan}, "non-finite loss (nan)"),
        ({"grad_norm": np.float32(math.inf)}, "non-finite global grad_norm (inf)"),
        ({"layers": {"grad_norm": [1.0, 2.0, -math.inf]}}, "non-finite grad_norm (-inf) in layer 'head'"),
        (
            {"layers": {"grad_norm": np.array([1.0, math.nan, 0, math.nan])}},
            "grad_norm (nan) in layer 'norm'",
        ),
    ],
)
def test_nonfinite_loss_or_gradient_halts_locally(
    fake_service: FakeService,
    make_monitor: MakeMonitor,
    logs: LogCapture,
    values: dict[str, Any],
    reason: str,
) -> None:
    monitor = make_monitor(fake_service.url, layers=LAYERS)
    assert monitor.log_step(6, loss=1.0, grad_norm=1.0) is None
    halt = monitor.log_step(7, **values)
    monitor.close()

    assert halt is not None and halt == monitor.halted
    assert (halt.step, halt.source, halt.command_id) == (7, "client", None)
    assert halt.reason.endswith(reason)
    assert logs.messages(WARNING) == [f"nanwatch: halting run run-a at step 7: {halt.reason} (client)"]
    assert fake_service.steps() == [6, 7] and fake_service.acks() == []


def test_halt_on_never_does_not_halt_locally(fake_service: FakeService, make_monitor: MakeMonitor) -> None:
    monitor = make_monitor(fake_service.url, halt_on="never")
    halts = [monitor.log_step(0, loss=math.nan, grad_norm=math.inf, layers={"grad_norm": [math.nan]})]
    monitor.close()

    assert halts == [None] and monitor.halted is None
    assert fake_service.runs["run-a"]["halt_on"] == "never"


# ---------------------------------------------------------------------- configuration


def test_token_is_sent_as_a_bearer_header(fake_service: FakeService, make_monitor: MakeMonitor) -> None:
    monitor = make_monitor(fake_service.url, token="s3cret")
    step_until(monitor, lambda _: bool(fake_service.batches()), what="a batch")
    monitor.close()

    assert {r.headers.get("authorization") for r in fake_service.seen()} == {"Bearer s3cret"}


def test_url_and_token_default_to_the_environment(
    fake_service: FakeService, monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    monkeypatch.setenv("NANWATCH_URL", fake_service.url + "/")
    monkeypatch.setenv("NANWATCH_TOKEN", "from-env")
    with Monitor(logger=logs.logger) as monitor:
        monitor.log_step(0, loss=1.0)

    assert monitor.run_id.startswith("run-")
    assert logs.messages(INFO) == [f"nanwatch: run id {monitor.run_id} (pass run_id=... to choose one)"]
    assert [r.run_id for r in fake_service.seen()] == [monitor.run_id] * len(fake_service.seen())
    assert {r.headers.get("authorization") for r in fake_service.seen()} == {"Bearer from-env"}


def test_missing_url_names_the_argument_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NANWATCH_URL", raising=False)
    with pytest.raises(ValueError, match=r"Monitor\(url=.*NANWATCH_URL"):
        Monitor()


def test_bad_values_fail_in_the_caller_not_on_the_wire(fake_service: FakeService, make_monitor: MakeMonitor) -> None:
    with pytest.raises(ProtocolError, match="halt_on"):
        Monitor(fake_service.url, "run-x", halt_on="sometimes")
    monitor = make_monitor(fake_service.url)
    with pytest.raises(ProtocolError, match=r"layers\.grad_nrom"):
        monitor.log_step(0, layers={"grad_nrom": [1.0]})
    with pytest.raises(ProtocolError, match="layers"):
        monitor.register(layers=[{"name": "dense", "units": 3}])


def test_a_reported_event_rides_with_the_next_batch_and_survives_a_retry(
    fake_service: FakeService, make_monitor: MakeMonitor
) -> None:
    monitor = make_monitor(fake_service.url)
    fake_service.forced_statuses.append(503)  # the first batch is refused: the event goes back with it
    monitor.report_event(0, "recovery", "rolled back to step 0", rolled_back_to=0, lr=5e-4, command_id="c1")
    monitor.log_step(0, loss=1.0)
    monitor.close(timeout=10)

    events = [e for batch in fake_service.batches("run-a") for e in batch["events"]]
    details = {"rolled_back_to": 0, "lr": 5e-4, "command_id": "c1"}
    assert events == [{"step": 0, "kind": "recovery", "message": "rolled back to step 0", "details": details}]
    refused = fake_service.seen("POST", "run-a")[0]
    assert refused.status == 503 and refused.body is not None and refused.body["events"] == events


def test_an_event_outside_the_protocol_is_refused_at_once(fake_service: FakeService, make_monitor: MakeMonitor) -> None:
    monitor = make_monitor(fake_service.url)
    with pytest.raises(ProtocolError, match="kind"):
        monitor.report_event(0, "Recovery", "")
    with pytest.raises(ProtocolError, match=r"details\.when"):
        monitor.report_event(0, "recovery", "", when=[1, 2])  # type: ignore[arg-type]
