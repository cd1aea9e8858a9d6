"""fp8 weight formats and the two fp8 Linear layers written here (`fp8-per-channel`, `fp8-static`)."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
COMPUTE_DTYPE = torch.bfloat16
FP8_DYNAMIC_MIN_CAPABILITY = (8, 9)  # Ada (L4) and Hopper (H100) have fp8 tensor cores


def supports_fp8_matmul(device: torch.device | str) -> bool:
    device = torch.device(device)
    return (device.type == "cuda" and torch.cuda.is_available()
            and torch.cuda.get_device_capability(device) >= FP8_DYNAMIC_MIN_CAPABILITY)


def _to_fp8(weight: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`weight` scaled so that `amax` maps to 448, as float8_e4m3fn, and the fp32 scale."""
    scale = (amax / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    return (weight / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def fp8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float8_e4m3fn weights with one fp32 scale per output row: row max |w| maps to 448."""
    w = weight.detach().float()
    return _to_fp8(w, w.abs().amax(dim=1, keepdim=True))


def fp8_per_tensor(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale for the whole tensor (for comparison; no method uses it)."""
    w = weight.detach().float()
    q, scale = _to_fp8(w, w.abs().amax())
    return q, scale.reshape(1, 1)


class Fp8PerChannelLinear(nn.Linear):
    """A Linear whose weight is stored as float8_e4m3fn with an fp32 scale per output channel.

    forward dequantises the weight to bf16 (weight × scale) and runs a bf16 matmul. A
    subclass of `nn.Linear` (with `compute_dtype`) so peft can put a LoRA on top of it.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 compute_dtype: torch.dtype = COMPUTE_DTYPE, device=None) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8_DTYPE, device=device),
                                   requires_grad=False)
        self.register_buffer("weight_scale", torch.ones(out_features, 1, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device),
                                 requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, compute_dtype: torch.dtype = COMPUTE_DTYPE):
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  compute_dtype=compute_dtype, device=linear.weight.device)
        q, scale = fp8_per_channel(linear.weight)
        new.weight.data.copy_(q)
        new.weight_scale.copy_(scale)
        if linear.bias is not None:
            new.bias.data.copy_(linear.bias.detach().to(compute_dtype))
        return new

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.to(self.compute_dtype) * self.weight_scale.to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(self.compute_dtype) if self.bias is not None else None
        return F.linear(x.to(self.compute_dtype), self.dequantized_weight(), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=float8_e4m3fn/row"


class Fp8StaticLinear(Fp8PerChannelLinear):
    """Per-channel fp8 weights plus a static per-tensor activation scale (`input_scale`, a buffer).

    The input is quantised to float8_e4m3fn with the calibrated scale (values beyond the
    calibrated range saturate at ±448·scale). On a GPU with fp8 tensor cores (compute
    capability ≥ 8.9) the matmul runs in fp8 with `torch._scaled_mm`; elsewhere the fp8
    input is dequantised and multiplied in bf16, which gives the same numbers up to
    accumulation order.
    """

    def __init__(self, in_features: int, out_features: int, **kwargs) -> None:
        super().__init__(in_features, out_features, **kwargs)
        device = self.weight.device
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float32, device=device))
        self._fused: bool | None = None  # decided at the first CUDA forward

    @classmethod
    def from_linear(cls, linear: nn.Linear, compute_dtype: torch.dtype = COMPUTE_DTYPE, *, input_amax: float = 1.0):
        new = super().from_linear(linear, compute_dtype)
        new.input_scale.fill_(max(float(input_amax), 1e-12) / FP8_MAX)
        return new

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.input_scale.to(x.device)
        return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q = self.quantize_input(x)
        if self._fused is not False and x.is_cuda and supports_fp8_matmul(x.device):
            try:
                out = self._fused_forward(x_q)
                self._fused = True
                return out
            except RuntimeError as exc:  # shape or kernel not supported on this GPU: use the bf16 path
                log.warning("fp8-static: torch._scaled_mm unavailable (%s); dequantising instead", exc)
                self._fused = False
        x_deq = x_q.to(self.compute_dtype) * self.input_scale.to(self.compute_dtype)
        return super().forward(x_deq)

    def _fused_forward(self, x_q: torch.Tensor) -> torch.Tensor:  # pragma: no cover - needs a CUDA fp8 GPU
        shape = x_q.shape
        a = x_q.reshape(-1, shape[-1]).contiguous()
        scale_a = self.input_scale.float().expand(a.shape[0], 1).contiguous()
        scale_b = self.weight_scale.float().reshape(1, -1).contiguous()
        out = torch._scaled_mm(a, self.weight.t(), scale_a=scale_a, scale_b=scale_b,
                               bias=self.bias.to(self.compute_dtype) if self.bias is not None else None,
                               out_dtype=self.compute_dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", input_scale={float(self.input_scale):.3g}"
