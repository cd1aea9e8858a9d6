"""Shapes of a model's quantizable Linear layers, and the bytes each method stores for them.

No weights: the counts come from a model built on the `meta` device. `linear_bytes` follows each
method's storage format (see `methods` and `layers`); bench/quantization.py checks it against
measured bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from functions.quantization.methods import NF4_BLOCKSIZE
from functions.quantization.targets import floating_point_elems
from schemas.errors import VideostudioError


@dataclass(frozen=True)
class LinearShape:
    name: str
    in_features: int
    out_features: int
    bias: bool

    @property
    def elems(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


def linear_bytes(shape: LinearShape, method: str, *, int8_backend: str = "torchao") -> int:
    """Storage of one Linear quantized with `method`."""
    o, i, b = shape.out_features, shape.in_features, shape.bias
    bias_bf16 = 2 * o if b else 0
    n = o * i
    if method == "bf16":
        return 2 * n + bias_bf16
    if method == "fp8":  # layerwise casting stores weight and bias in fp8
        return n + (o if b else 0)
    if method == "fp8-per-channel":
        return n + 4 * o + bias_bf16
    if method == "fp8-static":
        return n + 4 * o + 4 + bias_bf16
    if method == "fp8-dynamic":  # torchao Float8Tensor, PerRow: fp8 data + fp32 scale per row
        return n + 4 * o + bias_bf16
    if method == "int8":
        # torchao Int8Tensor: int8 data, fp32 scale and int8 zero point per row; bitsandbytes: fp32 SCB per row
        return n + (5 * o if int8_backend == "torchao" else 4 * o) + bias_bf16
    if method == "nf4":
        blocks = math.ceil(n / NF4_BLOCKSIZE)
        # packed 4-bit data, 8-bit double-quantised absmax per block, fp32 absmax per 256 blocks,
        # the 256-entry fp32 code of the second level, the 16-entry nf4 code and an fp32 offset
        return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / 256) + 4 * 256 + 4 * 16 + 4 + bias_bf16
    raise VideostudioError("unknown_quantization", f"unknown quantization {method!r}")


@dataclass(frozen=True)
class ComponentShape:
    """Parameter counts of one model and the Linear layers quantization replaces."""

    params: int                     # floating-point parameters and buffers
    targets: tuple[LinearShape, ...]
    unquantized_bytes: int = 2      # per parameter no method touches: bf16 (a VAE kept in fp32: 4)

    @classmethod
    def of(cls, module: nn.Module, targets: list[tuple[str, nn.Linear]]) -> ComponentShape:
        return cls(floating_point_elems(module),
                   tuple(LinearShape(name, lin.in_features, lin.out_features, lin.bias is not None)
                         for name, lin in targets))

    @property
    def target_elems(self) -> int:
        return sum(t.elems for t in self.targets)

    def weight_bytes(self, method: str, *, int8_backend: str = "torchao") -> int:
        """Bytes of this model's weights with `method` (non-target tensors keep `unquantized_bytes`)."""
        other = (self.params - self.target_elems) * self.unquantized_bytes
        return other + sum(linear_bytes(t, method, int8_backend=int8_backend) for t in self.targets)

    @property
    def largest_target(self) -> LinearShape | None:
        return max(self.targets, key=lambda t: t.in_features * t.out_features, default=None)
