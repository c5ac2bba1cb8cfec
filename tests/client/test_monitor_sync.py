"""Monitor.sync: opt-in lockstep, so a detector's halt lands at the step that raised it."""

from __future__ import annotations

import logging
import math

from nanwatch import Monitor
from tests.conftest import Service, free_port
from tests.service.helpers import LAYERS, healthy_layers


def test_sync_returns_the_detectors_halt_at_the_offending_step(service: Service) -> None:
    with Monitor(service.url, "lockstep", layers=LAYERS, flush_interval=60.0) as monitor:
        for step in range(3):
            monitor.log_step(step, loss=0.5, layers=healthy_layers())
            assert monitor.sync(step, timeout=30.0) is None
        poisoned = healthy_layers()
        poisoned["act_frac_nonfinite"] = [0.0, 0.5, 0.0]
        assert monitor.log_step(3, loss=0.5, layers=poisoned) is None  # the loss is finite: no local halt
        halt = monitor.sync(3, timeout=30.0)
    assert halt is not None and halt.step == 3 and halt.source == "detector"
    assert "my_custom_layer" in halt.reason
    view = service.client.get("/v1/runs/lockstep").json()
    assert view["status"] == "halted" and view["halt"]["acked_step"] == 3


def test_sync_does_not_wait_while_the_service_is_away() -> None:
    logger = logging.getLogger("nanwatch.test.sync")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    monitor = Monitor(f"http://127.0.0.1:{free_port()}", "away", flush_interval=60.0, logger=logger)
    try:
        for step in range(20):
            monitor.log_step(step, loss=math.pi)
            assert monitor.sync(step, timeout=600.0) is None  # a wait would hang the test for 10 minutes
    finally:
        monitor.close(timeout=0.5)
