"""Detection on the public scenario suite: nanwatch against TerminateOnNaN, in the same run.

For every scenario: the first non-finite step when nothing watches (measured), the first warning, the
first critical, the step the job stopped at, whether every weight was finite then, and false warnings
(warnings on a healthy scenario). nanwatch runs against a real service, with the callback in lockstep
(``lockstep=True``: each step waits for the service's verdict, so a halt lands at the step that earned it).

    PYTHONPATH=. python bench/detection.py [--reps 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # the scenarios' recorded numerics on any CPU (tests/conftest.py)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._service import running_service
from tests.scenarios import SCENARIOS
from tests.scenarios.monitored import Outcome, run_with_nanwatch, run_with_terminate_on_nan

COLUMNS = ("scenario", "watcher", "nonfinite", "warn", "critical", "lead", "stopped", "weights", "false warn")


def row(o: Outcome) -> tuple[str, ...]:
    def show(v: int | None) -> str:
        return "-" if v is None else str(v)

    finite = "finite" if o.weights_finite_at_stop else "NON-FINITE"
    return (o.scenario, o.watcher, show(o.first_nonfinite), show(o.first_warning), show(o.first_critical),
            show(o.lead), show(o.stopped_at), finite, str(o.false_warnings))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    logging.getLogger("nanwatch").setLevel(logging.ERROR)
    rows = [COLUMNS]
    with running_service() as url:
        for name in args.scenarios.split(","):
            rows.append(row(run_with_terminate_on_nan(name)))
            nanwatch = run_with_nanwatch(name, url)
            rows.append(row(nanwatch))
            for event in nanwatch.events:
                since = ", ".join(f"{sev} at {step}" for sev, step in event.get("severity_steps", {}).items())
                print(f"  {name}: step {event['first_step']} {event['detector']} ({since})"
                      f" [{event['layer'] or '-'}] {event['message']}")  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    print()
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
