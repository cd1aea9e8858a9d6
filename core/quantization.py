"""Quantization of Mochi's transformer (and its T5 text encoder): one small class per method.

Every method starts from the model in bf16 and replaces (or hooks) the *target* Linear layers
only. Targets are all `nn.Linear` modules except those whose qualified name matches
`DEFAULT_SKIP_PATTERNS` (embeddings, the final output layers) or a user-listed pattern.
Norm layers, embeddings and convolutions are never touched, because they are not Linear
layers. Mochi's adaLN modulation projections (`norm1.linear`, `norm1_context.linear`) are
Linear layers. They hold about 28 % of the transformer's weights, so they are quantized too
(add `norm1` to the skip patterns to keep them in bf16).

| method            | weights                          | activations          | backend                              |
|-------------------|----------------------------------|----------------------|--------------------------------------|
| `bf16`            | bf16                             | bf16                 | torch                                |
| `fp8`             | float8_e4m3fn, no scale          | bf16                 | diffusers layerwise casting hooks    |
| `fp8-per-channel` | float8_e4m3fn + fp32 scale/row   | bf16                 | `Fp8PerChannelLinear` (here)         |
| `fp8-static`      | float8_e4m3fn + fp32 scale/row   | fp8, calibrated scale | `Fp8StaticLinear` (here)            |
| `fp8-dynamic`     | torchao float8                   | fp8, per-batch scale | torchao (CUDA, compute capability ≥ 8.9) |
| `int8`            | int8 + scale/row                 | bf16                 | torchao on CPU, bitsandbytes on CUDA |
| `nf4`             | 4-bit NormalFloat, blocks of 64  | bf16                 | bitsandbytes `Linear4bit`            |

`quantize_module(module, method, device=...)` quantizes one model in place and returns a
`QuantizationReport`; `storage_bytes(module)` counts what a model really stores (packed
data, scales, quantization state).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from schemas.errors import VideostudioError

log = logging.getLogger(__name__)

METHODS = ("bf16", "fp8", "fp8-per-channel", "fp8-static", "fp8-dynamic", "int8", "nf4")
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
COMPUTE_DTYPE = torch.bfloat16
NF4_BLOCKSIZE = 64
FP8_DYNAMIC_MIN_CAPABILITY = (8, 9)  # Ada (L4) and Hopper (H100) have fp8 tensor cores
# The text encoder gets the weight-only counterpart: T5's activations have large outliers.
TEXT_ENCODER_METHOD = {"bf16": "bf16", "fp8": "fp8", "fp8-per-channel": "fp8-per-channel",
                       "fp8-static": "fp8-per-channel", "fp8-dynamic": "fp8-per-channel", "int8": "int8", "nf4": "nf4"}
# Matched with re.search against each module's qualified name (diffusers' layerwise casting does the same).
DEFAULT_SKIP_PATTERNS: tuple[str, ...] = (
    r"(^|\.)patch_embed(\.|$)",   # Mochi: patch embedding (a conv, listed for clarity)
    r"(^|\.)pos_embed(\.|$)",
    r"(^|\.)time_embed(\.|$)",    # Mochi: timestep embedder and caption pooler
    r"(^|\.)norm_out(\.|$)",      # Mochi: the final adaLN before the output projection
    r"(^|\.)proj_out$",           # Mochi: output projection (tiny, precision-critical)
    r"(^|\.)lm_head$",
    r"(^|\.)lora_",               # peft adapter layers
)


def _supports_fp8_matmul(device: torch.device | str) -> bool:
    device = torch.device(device)
    return (device.type == "cuda" and torch.cuda.is_available()
            and torch.cuda.get_device_capability(device) >= FP8_DYNAMIC_MIN_CAPABILITY)


# --------------------------------------------------------------------------------------------
# targets and byte counting
# --------------------------------------------------------------------------------------------
def skip_regexes(skip: Iterable[str] = ()) -> list[re.Pattern[str]]:
    return [re.compile(p) for p in (*DEFAULT_SKIP_PATTERNS, *skip)]


def quantization_targets(module: nn.Module, skip: Iterable[str] = ()) -> list[tuple[str, nn.Linear]]:
    """The plain `nn.Linear` layers a method replaces: not skipped by name, not already quantized, and
    not in the model's `_keep_in_fp32_modules` (T5's `wo`: transformers casts its input to `wo`'s
    weight dtype, which would turn activations into fp8 or uint8)."""
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    patterns = skip_regexes([*skip, *(rf"(^|\.){re.escape(name)}$" for name in keep)])
    targets = []
    for name, sub in module.named_modules():
        if type(sub) is not nn.Linear:  # exact type: quantized subclasses and adapters are left alone
            continue
        if any(p.search(name) for p in patterns):
            continue
        targets.append((name, sub))
    return targets


def _leaves(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors behind a tensor (a torchao tensor subclass stores several)."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        if names:
            out: list[torch.Tensor] = []
            for name in names:
                out.extend(_leaves(getattr(tensor, name)))
            return out
    return [tensor]


def _extra_state(tensor: torch.Tensor) -> list[torch.Tensor]:
    """bitsandbytes keeps scales outside the parameter's data: 4-bit quant_state, 8-bit SCB."""
    extra = []
    state = getattr(tensor, "quant_state", None)
    while state is not None:
        extra.extend(t for t in (getattr(state, "absmax", None), getattr(state, "code", None),
                                 getattr(state, "offset", None)) if isinstance(t, torch.Tensor))
        state = getattr(state, "state2", None)
    scb = getattr(tensor, "SCB", None)
    if isinstance(scb, torch.Tensor):
        extra.append(scb)
    return extra


def storage_bytes(module: nn.Module) -> int:
    """Bytes a module really stores: parameters and buffers, unpacked from tensor subclasses,
    plus bitsandbytes' quantization state. Shared tensors count once."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        for leaf in [*_leaves(tensor), *_extra_state(tensor)]:
            if id(leaf) in seen:
                continue
            seen.add(id(leaf))
            total += leaf.numel() * leaf.element_size()
    return total


def bf16_bytes(module: nn.Module) -> int:
    """What the module's floating-point parameters and buffers take in bf16 (the baseline)."""
    return sum(t.numel() * 2 for t in [*module.parameters(), *module.buffers()] if t.is_floating_point())


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


# --------------------------------------------------------------------------------------------
# our fp8 layers
# --------------------------------------------------------------------------------------------
def fp8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float8_e4m3fn weights with one fp32 scale per output row: row max |w| maps to 448."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def fp8_per_tensor(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale for the whole tensor (for comparison; no method uses it)."""
    w = weight.detach().float()
    scale = (w.abs().amax() / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale.reshape(1, 1)


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
        if self._fused is not False and x.is_cuda and _supports_fp8_matmul(x.device):
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


# --------------------------------------------------------------------------------------------
# methods: one small class each
# --------------------------------------------------------------------------------------------
@dataclass
class QuantizationReport:
    """What a method did to one model."""

    method: str
    backend: str
    layers: int                       # target Linear layers quantized
    weight_bytes: int                 # storage_bytes after
    bf16_weight_bytes: int            # the same model in bf16
    skip_patterns: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.weight_bytes / self.bf16_weight_bytes if self.bf16_weight_bytes else 1.0


class Method:
    """Quantizes the target Linear layers of a bf16 model in place."""

    name = "bf16"
    backend = "torch bf16"

    def unsupported_reason(self, device: torch.device) -> str | None:
        return None

    def apply(self, module: nn.Module, targets: list[tuple[str, nn.Linear]], device: torch.device) -> None:
        return None


class Bf16(Method):
    pass


class Fp8Storage(Method):
    """fp8 storage, bf16 compute: diffusers' layerwise-casting hook on each target Linear.

    `enable_layerwise_casting` on the whole model would also skip every module whose name
    contains "norm" (Mochi's `_skip_layerwise_casting_patterns`), which keeps the adaLN
    modulation Linears in bf16; hooking the targets directly keeps one rule for all methods.
    """

    name = "fp8"
    backend = "diffusers layerwise casting (float8_e4m3fn storage, bf16 compute)"

    def apply(self, module, targets, device):
        from diffusers.hooks.layerwise_casting import _disable_peft_input_autocast, apply_layerwise_casting_hook

        for _, linear in targets:
            apply_layerwise_casting_hook(linear, FP8_DTYPE, COMPUTE_DTYPE, non_blocking=False)
            linear.compute_dtype = COMPUTE_DTYPE  # peft then keeps LoRA adapters in bf16, not fp8
        _disable_peft_input_autocast(module)


class Fp8PerChannel(Method):
    name = "fp8-per-channel"
    backend = "Fp8PerChannelLinear (float8_e4m3fn, fp32 scale per output channel, bf16 compute)"

    def apply(self, module, targets, device):
        for name, linear in targets:
            _set_submodule(module, name, Fp8PerChannelLinear.from_linear(linear))


class Fp8Static(Method):
    """Per-channel fp8 weights; per-tensor activation scales calibrated by `calibrate`.

    `calibrate` runs a few representative forward passes of the (still bf16) model; forward
    hooks record each target's largest |input|. Without calibration data the method refuses.
    """

    name = "fp8-static"
    backend = "Fp8StaticLinear (fp8 weights per channel, calibrated per-tensor fp8 activations)"

    def __init__(self, calibrate: Callable[[], None] | None = None) -> None:
        self.calibrate = calibrate

    def apply(self, module, targets, device):
        if self.calibrate is None:
            raise VideostudioError("quantization_unsupported", "fp8-static needs calibration batches")
        amax = calibrate_input_amax(targets, self.calibrate)
        missing = [name for name, _ in targets if name not in amax]
        if missing:
            log.warning("fp8-static: %d layers saw no calibration input (e.g. %s); they use scale 1", len(missing),
                        missing[0])
        for name, linear in targets:
            _set_submodule(module, name, Fp8StaticLinear.from_linear(linear, input_amax=amax.get(name, FP8_MAX)))


def calibrate_input_amax(targets: list[tuple[str, nn.Linear]], run: Callable[[], None]) -> dict[str, float]:
    """Largest |input| each target Linear sees while `run()` executes (forward pre-hooks)."""
    amax: dict[str, float] = {}

    def hook_for(name: str):
        def hook(_module, args):
            value = float(args[0].detach().abs().amax())
            amax[name] = max(amax.get(name, 0.0), value)
        return hook

    handles = [linear.register_forward_pre_hook(hook_for(name)) for name, linear in targets]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return amax


class Fp8Dynamic(Method):
    name = "fp8-dynamic"
    backend = "torchao Float8DynamicActivationFloat8WeightConfig"

    def unsupported_reason(self, device):
        if device.type != "cuda" or not torch.cuda.is_available():
            return (f"fp8-dynamic needs a CUDA GPU with compute capability ≥ 8.9 (L4, H100); this job runs on "
                    f"{device.type}. Use fp8-per-channel or int8 here")
        capability = torch.cuda.get_device_capability(device)
        if capability < FP8_DYNAMIC_MIN_CAPABILITY:
            return (f"fp8-dynamic needs compute capability ≥ 8.9; {torch.cuda.get_device_name(device)} has "
                    f"{capability[0]}.{capability[1]}. Use fp8-per-channel or int8")
        return None

    def apply(self, module, targets, device):  # pragma: no cover - needs a CUDA fp8 GPU
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        ids = {id(linear) for _, linear in targets if linear.in_features % 16 == 0 and linear.out_features % 16 == 0}
        quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
                  filter_fn=lambda m, _fqn: id(m) in ids)


class Int8WeightOnly(Method):
    """Weight-only int8 with a scale per output channel: torchao on CPU, bitsandbytes on CUDA."""

    name = "int8"
    backend = "int8 weight-only"

    def __init__(self, backend: str = "auto") -> None:
        self.choice = backend

    def _backend(self, device: torch.device) -> str:
        if self.choice != "auto":
            return self.choice
        return "bitsandbytes" if device.type == "cuda" else "torchao"

    def apply(self, module, targets, device):
        if self._backend(device) == "torchao":
            from torchao.quantization import Int8WeightOnlyConfig, quantize_

            ids = {id(linear) for _, linear in targets}
            quantize_(module, Int8WeightOnlyConfig(), filter_fn=lambda m, _fqn: id(m) in ids, device=device)
            self.backend = "torchao Int8WeightOnlyConfig"
            return
        import bitsandbytes as bnb

        for name, linear in targets:
            new = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                      has_fp16_weights=False, threshold=6.0, device="meta")
            new.weight = bnb.nn.Int8Params(linear.weight.detach().to(COMPUTE_DTYPE).cpu(), requires_grad=False,
                                           has_fp16_weights=False)
            if linear.bias is not None:
                new.bias = nn.Parameter(linear.bias.detach().to(COMPUTE_DTYPE), requires_grad=False)
            _set_submodule(module, name, new.to(device))
        self.backend = "bitsandbytes Linear8bitLt (LLM.int8, threshold 6.0)"


class Nf4(Method):
    name = "nf4"
    backend = "bitsandbytes Linear4bit (nf4, blocksize 64, double-quantised scales, bf16 compute)"

    def apply(self, module, targets, device):
        import bitsandbytes as bnb

        for name, linear in targets:
            new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                    compute_dtype=COMPUTE_DTYPE, compress_statistics=True, quant_type="nf4",
                                    quant_storage=torch.uint8, device="meta")
            new.weight = bnb.nn.Params4bit(linear.weight.detach().to(COMPUTE_DTYPE).cpu(), requires_grad=False,
                                           quant_type="nf4", blocksize=NF4_BLOCKSIZE, compress_statistics=True,
                                           quant_storage=torch.uint8, module=new)
            if linear.bias is not None:
                new.bias = nn.Parameter(linear.bias.detach().to(COMPUTE_DTYPE), requires_grad=False)
            _set_submodule(module, name, new.to(device))  # Params4bit quantizes on .to()


def make_method(method: str, *, calibrate: Callable[[], None] | None = None, int8_backend: str = "auto") -> Method:
    if method == "bf16":
        return Bf16()
    if method == "fp8":
        return Fp8Storage()
    if method == "fp8-per-channel":
        return Fp8PerChannel()
    if method == "fp8-static":
        return Fp8Static(calibrate)
    if method == "fp8-dynamic":
        return Fp8Dynamic()
    if method == "int8":
        return Int8WeightOnly(int8_backend)
    if method == "nf4":
        return Nf4()
    raise VideostudioError("unknown_quantization", f"unknown quantization {method!r}; use one of {', '.join(METHODS)}")


def unsupported_reason(method: str, device: torch.device | str) -> str | None:
    """Why `method` cannot run on `device` (None when it can)."""
    return make_method(method).unsupported_reason(torch.device(device))


def check_supported(method: str, device: torch.device | str) -> None:
    reason = unsupported_reason(method, device)
    if reason:
        raise VideostudioError("quantization_unsupported", reason)


def quantize_module(module: nn.Module, method: str, *, device: torch.device | str = "cpu", skip: Iterable[str] = (),
                    calibrate: Callable[[], None] | None = None, int8_backend: str = "auto",
                    target_device: torch.device | str | None = None, cast_to_bf16: bool = True) -> QuantizationReport:
    """Quantize `module` in place with `method`. The model is cast to bf16 first (every method's
    baseline; layerwise casting requires it). `calibrate` runs fp8-static's calibration passes.

    `device` is where the weights are now; `target_device` (default: the same) is where the model
    will run, which decides support (fp8-dynamic) and the int8 backend."""
    device = torch.device(device)
    target = torch.device(target_device) if target_device is not None else device
    impl = make_method(method, calibrate=calibrate,
                       int8_backend=int8_backend if int8_backend != "auto" else
                       ("bitsandbytes" if target.type == "cuda" else "torchao"))
    reason = impl.unsupported_reason(target)
    if reason:
        raise VideostudioError("quantization_unsupported", reason)
    if cast_to_bf16:
        module.to(COMPUTE_DTYPE)
    baseline = bf16_bytes(module)
    skip = list(skip)
    targets = quantization_targets(module, skip) if method != "bf16" else []
    impl.apply(module, targets, device)
    return QuantizationReport(method=method, backend=impl.backend, layers=len(targets),
                              weight_bytes=storage_bytes(module), bf16_weight_bytes=baseline,
                              skip_patterns=[*DEFAULT_SKIP_PATTERNS, *skip])


@dataclass
class PipelineQuantization:
    """What quantizing a Mochi pipeline did: the transformer's and the text encoder's reports."""

    method: str
    transformer: QuantizationReport
    text_encoder: QuantizationReport | None

    @property
    def weight_bytes(self) -> int:
        return self.transformer.weight_bytes + (self.text_encoder.weight_bytes if self.text_encoder else 0)

    @property
    def bf16_weight_bytes(self) -> int:
        return self.transformer.bf16_weight_bytes + (self.text_encoder.bf16_weight_bytes if self.text_encoder else 0)

    def metrics(self) -> dict:
        te = self.text_encoder
        return {
            "method": self.method,
            "backend": self.transformer.backend,
            "layers": self.transformer.layers,
            "text_encoder_method": te.method if te else None,
            "text_encoder_backend": te.backend if te else None,
            "weight_bytes": self.weight_bytes,
            "transformer_bytes": self.transformer.weight_bytes,
            "text_encoder_bytes": te.weight_bytes if te else None,
            "bf16_weight_bytes": self.bf16_weight_bytes,
            "ratio_to_bf16": round(self.weight_bytes / self.bf16_weight_bytes, 4) if self.bf16_weight_bytes else None,
        }


def quantize_pipeline(pipe, method: str, *, device: torch.device | str = "cpu",
                      target_device: torch.device | str | None = None, skip: Iterable[str] = (),
                      calibrate: Callable[[], None] | None = None) -> PipelineQuantization:
    """Cast a Mochi pipeline to bf16 and quantize its transformer with `method` and its text encoder
    with the weight-only counterpart (`TEXT_ENCODER_METHOD`). The VAE stays bf16."""
    pipe.to(COMPUTE_DTYPE)
    skip = list(skip)
    transformer = quantize_module(pipe.transformer, method, device=device, target_device=target_device, skip=skip,
                                  calibrate=calibrate, cast_to_bf16=False)
    text_encoder = None
    if getattr(pipe, "text_encoder", None) is not None:
        text_encoder = quantize_module(pipe.text_encoder, TEXT_ENCODER_METHOD[method], device=device,
                                       target_device=target_device, skip=skip, cast_to_bf16=False)
    return PipelineQuantization(method, transformer, text_encoder)
