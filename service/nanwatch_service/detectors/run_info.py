"""The parts of a run registration the detectors read: the layer table and the dtype limits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

BoolArray = npt.NDArray[np.bool_]

DTYPE_MAX: Final[dict[str, float]] = {
    "float16": 65504.0,
    "bfloat16": 3.3895313892515355e38,
    "float32": 3.4028234663852886e38,
    "float64": 1.7976931348623157e308,
}
"""Largest finite value of each floating dtype."""

DTYPE_EPS: Final[dict[str, float]] = {
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
    "float32": 2.0**-24,
    "float64": 2.0**-53,
}
"""Gap between 1 and the largest value below it: a probability closer to 1 than this *is* 1."""

# policy -> (dtype of activations, dtype of variables, gradients and the loss)
POLICY_DTYPES: Final[dict[str, tuple[str, str]]] = {
    "float32": ("float32", "float32"),
    "float16": ("float16", "float16"),
    "bfloat16": ("bfloat16", "bfloat16"),
    "mixed_float16": ("float16", "float32"),
    "mixed_bfloat16": ("bfloat16", "float32"),
    "float64": ("float64", "float64"),
}

RELU_ACTIVATIONS: Final = frozenset({"relu", "relu6"})
PROBABILITY_ACTIVATIONS: Final = frozenset({"sigmoid", "softmax", "hard_sigmoid"})
BOUNDED_ACTIVATIONS: Final = PROBABILITY_ACTIVATIONS | {"tanh", "hard_tanh", "softsign"}
SPARSE_GRADIENT_KINDS: Final = frozenset({"Embedding"})
PASS_THROUGH_KINDS: Final = frozenset(
    """Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D Flatten Reshape Permute RepeatVector
    MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D AveragePooling2D AveragePooling3D
    GlobalMaxPooling1D GlobalMaxPooling2D ZeroPadding1D ZeroPadding2D Cropping1D Cropping2D
    UpSampling1D UpSampling2D Identity""".split()  # noqa: SIM905
)
"""Layers that only move, drop or pool their input: their output keeps the previous layer's zeros."""

BUILTIN_KINDS: Final = frozenset(
    """Dense EinsumDense Conv1D Conv2D Conv3D Conv1DTranspose Conv2DTranspose Conv3DTranspose
    DepthwiseConv1D DepthwiseConv2D SeparableConv1D SeparableConv2D Embedding LSTM GRU SimpleRNN RNN
    Bidirectional BatchNormalization LayerNormalization GroupNormalization UnitNormalization
    RMSNormalization Normalization Rescaling Dropout SpatialDropout1D SpatialDropout2D GaussianNoise
    Activation ReLU LeakyReLU PReLU ELU Softmax Flatten Reshape Permute RepeatVector InputLayer
    MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D AveragePooling2D AveragePooling3D
    GlobalAveragePooling1D GlobalAveragePooling2D GlobalMaxPooling1D GlobalMaxPooling2D Add Subtract
    Multiply Average Maximum Minimum Concatenate Dot MultiHeadAttention Attention ZeroPadding2D
    Cropping2D UpSampling2D Identity TimeDistributed""".split()  # noqa: SIM905
)
"""Keras layer classes whose arithmetic is guarded; a NaN born elsewhere points at user code."""


class RunInfo:
    """Layer table in forward order, the layer masks the detectors select by, and the dtype limits."""

    def __init__(self, run: Mapping[str, Any]) -> None:
        layers: Sequence[Mapping[str, Any]] = run.get("layers") or ()
        self.names = tuple(str(layer["name"]) for layer in layers)
        self.kinds = tuple(str(layer.get("kind") or "Layer") for layer in layers)
        self.activations = tuple(_activation(layer) for layer in layers)
        self.has_weights = np.array([int(layer.get("params") or 0) > 0 for layer in layers], dtype=bool)
        self.dtype_policy = str(run.get("dtype_policy") or "float32")
        self.stable_loss = bool(run.get("stable_loss"))  # probabilities at exactly 0 or 1 cannot break it
        self.act_dtype, self.var_dtype = POLICY_DTYPES.get(self.dtype_policy, ("float32", "float32"))
        # Each layer's own compute dtype when the table carries it (the Keras callback sends it); else, under
        # a mixed policy, the output layer is taken to compute in float32, as Keras recommends.
        self.act_dtypes = tuple(
            str(layer.get("dtype") or (self.var_dtype if self.mixed and i == len(layers) - 1 else self.act_dtype))
            for i, layer in enumerate(layers)
        )
        self.act_limits = np.array([DTYPE_MAX[dtype] for dtype in self.act_dtypes])
        self.relu = self.mask(RELU_ACTIVATIONS)
        self.relu_like = _relu_like(self.relu, self.kinds, self.activations)
        self.bounded = self.mask(BOUNDED_ACTIVATIONS)
        self.probability = self.mask(PROBABILITY_ACTIVATIONS)
        self.sparse_grads = np.array([kind in SPARSE_GRADIENT_KINDS for kind in self.kinds], dtype=bool)

    @property
    def n_layers(self) -> int:
        """Number of layers in the table (the length of every layer array)."""
        return len(self.names)

    @property
    def mixed(self) -> bool:
        """Whether the policy computes in a half type with float32 variables (a loss scaler applies)."""
        return self.dtype_policy.startswith("mixed_")

    @property
    def grad_limit(self) -> float:
        """Largest finite gradient, weight or loss (the variable dtype: float32 under mixed policies)."""
        return DTYPE_MAX[self.var_dtype]

    @property
    def prob_eps(self) -> float:
        """Resolution just below 1 of the dtype probabilities are computed in (where one rounds to 1).

        Under a mixed policy the output layer runs in float32, as Keras recommends for a softmax/sigmoid.
        """
        return DTYPE_EPS["float32" if self.mixed else self.act_dtype]

    def mask(self, activations: frozenset[str]) -> BoolArray:
        """Layers whose activation is one of ``activations``."""
        return np.array([a in activations for a in self.activations], dtype=bool)

    def is_custom(self, index: int) -> bool:
        """Whether the layer is user code rather than a built-in Keras layer."""
        return self.kinds[index] not in BUILTIN_KINDS


def _relu_like(relu: BoolArray, kinds: tuple[str, ...], activations: tuple[str, ...]) -> BoolArray:
    """ReLU layers and the pass-through layers right after them: exact zeros are normal there."""
    mask = relu.copy()
    for i in range(1, len(mask)):
        mask[i] |= mask[i - 1] and kinds[i] in PASS_THROUGH_KINDS and not activations[i]
    return mask


def _activation(layer: Mapping[str, Any]) -> str:
    """Activation name, lower-case; a ``Softmax``/``ReLU`` layer counts as its activation."""
    name = str(layer.get("activation") or "").lower()
    kind = str(layer.get("kind") or "")
    if not name and kind in ("Softmax", "ReLU"):
        return kind.lower()
    return name
