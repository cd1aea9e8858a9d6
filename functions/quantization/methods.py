"""Quantization methods: one small class each, and `quantize_module`, which applies one to a model.

Every method starts from the model in bf16 and replaces (or hooks) the *target* Linear layers
only (`targets.quantization_targets`).

| method            | weights                          | activations          | backend                              |
|-------------------|----------------------------------|----------------------|--------------------------------------|
| `bf16`            | bf16                             | bf16                 | torch                                |
| `fp8`             | float8_e4m3fn, no scale          | bf16                 | diffusers layerwise casting hooks    |
| `fp8-per-channel` | float8_e4m3fn + fp32 scale/row   | bf16                 | `Fp8PerChannelLinear` (layers.py)    |
| `fp8-static`      | float8_e4m3fn + fp32 scale/row   | fp8, calibrated scale | `Fp8StaticLinear` (layers.py)       |
| `fp8-dynamic`     | torchao float8                   | fp8, per-batch scale | torchao (CUDA, compute capability ≥ 8.9) |
| `int8`            | int8 + scale/row                 | bf16                 | torchao on CPU, bitsandbytes on CUDA |
| `nf4`             | 4-bit NormalFloat, blocks of 64  | bf16                 | bitsandbytes `Linear4bit`            |

`quantize_module(module, method, device=...)` quantizes one model in place and returns a
`QuantizationReport`; `targets.storage_bytes(module)` counts what a model really stores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from functions.quantization.layers import (
    COMPUTE_DTYPE,
    FP8_DTYPE,
    FP8_DYNAMIC_MIN_CAPABILITY,
    FP8_MAX,
    Fp8PerChannelLinear,
    Fp8StaticLinear,
)
from functions.quantization.targets import (
    GENERIC_SKIP_PATTERNS,
    bf16_bytes,
    quantization_targets,
    set_submodule,
    storage_bytes,
)
from schemas.errors import VideostudioError

log = logging.getLogger(__name__)

METHODS = ("bf16", "fp8", "fp8-per-channel", "fp8-static", "fp8-dynamic", "int8", "nf4")
NF4_BLOCKSIZE = 64
# The weight-only counterpart of each method (bf16 activations): for a model whose activations have
# large outliers, which a per-tensor fp8 activation scale would clip. A model family picks it per component.
WEIGHT_ONLY_METHOD = {"bf16": "bf16", "fp8": "fp8", "fp8-per-channel": "fp8-per-channel",
                      "fp8-static": "fp8-per-channel", "fp8-dynamic": "fp8-per-channel", "int8": "int8", "nf4": "nf4"}
AS_REQUESTED = {method: method for method in METHODS}


def int8_backend_for(device: torch.device) -> str:
    return "bitsandbytes" if device.type == "cuda" else "torchao"


@dataclass
class QuantizationReport:
    """What a method did to one model."""

    method: str
    backend: str
    layers: int                       # target Linear layers quantized
    weight_bytes: int                 # storage_bytes after
    bf16_weight_bytes: int            # the same model in bf16
    skip_patterns: list[str] = field(default_factory=list)


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

    `enable_layerwise_casting` on the whole model would also skip every module its class lists in
    `_skip_layerwise_casting_patterns` (often anything named "norm", which would keep adaLN
    modulation Linears in bf16); hooking the targets directly keeps one rule for all methods.
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
            set_submodule(module, name, Fp8PerChannelLinear.from_linear(linear))


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
            set_submodule(module, name, Fp8StaticLinear.from_linear(linear, input_amax=amax.get(name, FP8_MAX)))


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


def _replace_with_bnb(module: nn.Module, targets: list[tuple[str, nn.Linear]], device: torch.device, *,
                      make: Callable[[nn.Linear], nn.Module],
                      wrap: Callable[[torch.Tensor, nn.Module], nn.Parameter]) -> None:
    """Swap each target for a bitsandbytes layer built on `meta` by `make`, with its bf16 weight wrapped by
    `wrap` (bitsandbytes quantizes it when the layer moves to `device`)."""
    for name, linear in targets:
        new = make(linear)
        new.weight = wrap(linear.weight.detach().to(COMPUTE_DTYPE).cpu(), new)
        if linear.bias is not None:
            new.bias = nn.Parameter(linear.bias.detach().to(COMPUTE_DTYPE), requires_grad=False)
        set_submodule(module, name, new.to(device))


class Int8WeightOnly(Method):
    """Weight-only int8 with a scale per output channel: torchao on CPU, bitsandbytes on CUDA."""

    name = "int8"
    backend = "int8 weight-only"

    def __init__(self, backend: str = "auto") -> None:
        self.choice = backend

    def apply(self, module, targets, device):
        if (self.choice if self.choice != "auto" else int8_backend_for(device)) == "torchao":
            from torchao.quantization import Int8WeightOnlyConfig, quantize_

            ids = {id(linear) for _, linear in targets}
            quantize_(module, Int8WeightOnlyConfig(), filter_fn=lambda m, _fqn: id(m) in ids, device=device)
            self.backend = "torchao Int8WeightOnlyConfig"
            return
        import bitsandbytes as bnb

        _replace_with_bnb(
            module, targets, device,
            make=lambda linear: bnb.nn.Linear8bitLt(linear.in_features, linear.out_features,
                                                    bias=linear.bias is not None, has_fp16_weights=False,
                                                    threshold=6.0, device="meta"),
            wrap=lambda weight, _new: bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False))
        self.backend = "bitsandbytes Linear8bitLt (LLM.int8, threshold 6.0)"


class Nf4(Method):
    name = "nf4"
    backend = "bitsandbytes Linear4bit (nf4, blocksize 64, double-quantised scales, bf16 compute)"

    def apply(self, module, targets, device):
        import bitsandbytes as bnb

        _replace_with_bnb(
            module, targets, device,
            make=lambda linear: bnb.nn.Linear4bit(linear.in_features, linear.out_features,
                                                  bias=linear.bias is not None, compute_dtype=COMPUTE_DTYPE,
                                                  compress_statistics=True, quant_type="nf4",
                                                  quant_storage=torch.uint8, device="meta"),
            wrap=lambda weight, new: bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4",
                                                       blocksize=NF4_BLOCKSIZE, compress_statistics=True,
                                                       quant_storage=torch.uint8, module=new))


_PLAIN_METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Bf16, Fp8Storage, Fp8PerChannel, Fp8Dynamic, Nf4)}


def make_method(method: str, *, calibrate: Callable[[], None] | None = None, int8_backend: str = "auto") -> Method:
    if method == "fp8-static":
        return Fp8Static(calibrate)
    if method == "int8":
        return Int8WeightOnly(int8_backend)
    if method in _PLAIN_METHODS:
        return _PLAIN_METHODS[method]()
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
    baseline; layerwise casting requires it). `skip` lists name patterns left in bf16 besides
    `GENERIC_SKIP_PATTERNS` (a model family's and the user's). `calibrate` runs fp8-static's
    calibration passes.

    `device` is where the weights are now; `target_device` (default: the same) is where the model
    will run, which decides support (fp8-dynamic) and the int8 backend."""
    device = torch.device(device)
    target = torch.device(target_device) if target_device is not None else device
    impl = make_method(method, calibrate=calibrate,
                       int8_backend=int8_backend if int8_backend != "auto" else int8_backend_for(target))
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
                              skip_patterns=[*GENERIC_SKIP_PATTERNS, *skip])
