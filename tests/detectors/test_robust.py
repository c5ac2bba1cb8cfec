"""The vectorized robust statistics agree with the obvious per-record computation."""

from __future__ import annotations

import ast
import math
import random
import statistics
from pathlib import Path

import numpy as np

import nanwatch_service.detectors as detectors
from nanwatch_service.detectors.robust import nan_median_rows, robust_z, trailing

ALLOWED_IMPORTS = {
    "__future__",
    "array",
    "collections",
    "dataclasses",
    "enum",
    "functools",
    "math",
    "numpy",
    "operator",
    "struct",
    "typing",
}


def test_rolling_robust_z_matches_median_and_mad_computed_one_record_at_a_time() -> None:
    rng = random.Random(3)
    series = np.array([rng.gauss(0.0, 1.0) if rng.random() > 0.1 else math.nan for _ in range(300)])
    z = robust_z(series, 100, 128, min_history=20, scale_floor=0.0)
    for i, position in enumerate(range(200, 300)):
        window = [v for v in series[max(0, position - 128) : position] if not math.isnan(v)]
        if math.isnan(series[position]):
            assert math.isnan(z[i])
            continue
        median = statistics.median(window)
        mad = statistics.median(abs(v - median) for v in window)
        assert z[i] == np.float32((series[position] - median) / (1.4826 * mad)) or math.isclose(
            z[i], (series[position] - median) / (1.4826 * mad), rel_tol=1e-5
        )


def test_no_z_before_the_warm_up_history_is_there() -> None:
    z = robust_z(np.arange(30.0), 30, 128, min_history=20, scale_floor=0.1)
    assert np.isnan(z[:20]).all()
    assert np.isfinite(z[20:]).all()


def test_median_of_rows_skips_nan_and_handles_empty_rows() -> None:
    median, count = nan_median_rows(
        np.array([[1.0, math.nan, 3.0, 2.0], [math.nan] * 4, [5.0, 1.0, math.nan, math.nan]])
    )
    assert median[0] == 2.0 and math.isnan(median[1]) and median[2] == 3.0
    assert count.tolist() == [3, 0, 2]


def test_trailing_windows_end_at_or_before_each_record_and_pad_with_nan() -> None:
    windows = trailing(np.arange(5.0), 2, 4, include_current=True)
    assert windows.tolist() == [[0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]]
    early = trailing(np.arange(2.0), 2, 3, include_current=False)
    assert np.isnan(early[0]).all() and early[1][-1] == 0.0


def test_detectors_import_nothing_but_numpy_the_standard_library_and_the_columns() -> None:
    for path in Path(detectors.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            # nanwatch.columns is the wire's data structure: numpy arrays, no I/O
            others = {name.split(".")[0] for name in names if name != "nanwatch.columns"}
            assert others <= ALLOWED_IMPORTS, (path.name, names)
