"""Detection engine: pure numpy rules over a run's step records, one module per precursor family.

>>> pipeline = Pipeline(run)                 # run = protocol.decode_run(...) output
>>> findings = pipeline.process(records)     # records = protocol.decode_record(...) outputs, in order
>>> changes = EpisodeTracker().update([r["step"] for r in records], findings)

| module | detectors |
|---|---|
| ``nonfinite`` | :class:`Nonfinite` |
| ``explosion`` | :class:`GradExplosion` |
| ``loss`` | :class:`LossSpike` |
| ``overflow`` | :class:`OverflowHeadroom` |
| ``amplification`` | :class:`Amplification` |
| ``activations`` | :class:`ZeroVariance`, :class:`DeadRelu` |
| ``saturation`` | :class:`Saturation` |
| ``gradients`` | :class:`VanishingGradient`, :class:`UpdateRatio` |
| ``loss_scale`` | :class:`LossScale` |

Shared machinery: ``batch`` (records to columnar arrays, read lazily), ``series`` and ``context``
(:class:`DetectorMemory`, the per-run trailing window that :meth:`Pipeline.warm` rebuilds;
:class:`DetectorSettings`; :class:`BatchView`), ``robust`` (rolling median/MAD z-scores), ``forecast``
(``steps_to_nonfinite``), ``pipeline`` (:class:`Pipeline` and ``DEFAULT_DETECTORS``), ``episodes``
(:class:`EpisodeTracker`) and ``nonfinite_masks`` (which records hold a non-finite value: the rule
``nonfinite`` reports on and the forecast reads). Nothing here imports TensorFlow, Keras or FastAPI, or
does I/O.
"""

from .activations import DeadRelu, ZeroVariance
from .amplification import Amplification
from .base import Detector
from .context import BatchView, DetectorMemory, DetectorSettings
from .episodes import EpisodeChange, EpisodeTracker
from .explosion import GradExplosion
from .finding import SEVERITY_RANK, Finding, Severity
from .gradients import UpdateRatio, VanishingGradient
from .loss import LossSpike
from .loss_scale import LossScale
from .nonfinite import Nonfinite
from .overflow import OverflowHeadroom
from .pipeline import DEFAULT_DETECTORS, Pipeline
from .saturation import Saturation

__all__ = [
    "DEFAULT_DETECTORS",
    "SEVERITY_RANK",
    "Amplification",
    "BatchView",
    "DeadRelu",
    "Detector",
    "DetectorMemory",
    "DetectorSettings",
    "EpisodeChange",
    "EpisodeTracker",
    "Finding",
    "GradExplosion",
    "LossScale",
    "LossSpike",
    "Nonfinite",
    "OverflowHeadroom",
    "Pipeline",
    "Saturation",
    "Severity",
    "UpdateRatio",
    "VanishingGradient",
    "ZeroVariance",
]
