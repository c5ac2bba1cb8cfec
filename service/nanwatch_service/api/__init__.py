"""HTTP API: one router per resource, all under ``/v1`` except health and metrics."""

from nanwatch_service.api import alertmanager, commands, events, halt, health, runs, series, steps

ROUTERS = (
    runs.router,
    steps.router,
    commands.router,
    series.router,
    events.router,
    halt.router,
    alertmanager.router,
    health.router,
)

__all__ = ["ROUTERS"]
