"""A model family's quantization rules, and quantizing a whole pipeline by them.

The rules say which layers are never quantized (the family's skip patterns, on top of
`targets.GENERIC_SKIP_PATTERNS`) and which method each pipeline component gets for a requested
method (the denoiser as requested, a text encoder with outliers weight-only, the VAE not at
all). The planner counts with the same rules, so its targets are the quantizer's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from functions.quantization.layers import COMPUTE_DTYPE
from functions.quantization.methods import QuantizationReport, quantize_module
from functions.quantization.targets import quantization_targets


@dataclass(frozen=True)
class QuantizationRules:
    skip_patterns: tuple[str, ...]                     # re.search'd against qualified module names
    component_methods: Mapping[str, Mapping[str, str]]  # pipeline attribute → requested → applied method
    denoiser: str                                       # runs at every step: its report leads the metrics

    def targets(self, module: nn.Module, skip: Iterable[str] = ()) -> list[tuple[str, nn.Linear]]:
        """`targets.quantization_targets` with this family's skip patterns and the user's `skip`."""
        return quantization_targets(module, (*self.skip_patterns, *skip))

    def quantize_module(self, module: nn.Module, method: str, *, skip: Iterable[str] = (),
                        **options) -> QuantizationReport:
        """`methods.quantize_module` with this family's skip patterns and the user's `skip`."""
        return quantize_module(module, method, skip=(*self.skip_patterns, *skip), **options)

    def method_for(self, component: str, method: str) -> str:
        """The method `component` gets when `method` is requested (bf16 for one no method touches)."""
        methods = self.component_methods.get(component)
        return methods[method] if methods is not None else "bf16"

    def quantize_pipeline(self, pipe, method: str, *, device: torch.device | str = "cpu",
                          target_device: torch.device | str | None = None, skip: Iterable[str] = (),
                          calibrate: Callable[[], None] | None = None) -> PipelineQuantization:
        """Cast a pipeline to bf16 and quantize each component the rules name with its method
        (components the pipeline lacks are left out). The others (the VAE) stay bf16."""
        pipe.to(COMPUTE_DTYPE)
        skip = list(skip)
        reports: dict[str, QuantizationReport | None] = {}
        for name in self.component_methods:
            module = getattr(pipe, name, None)
            reports[name] = None if module is None else self.quantize_module(
                module, self.method_for(name, method), device=device, target_device=target_device, skip=skip,
                calibrate=calibrate, cast_to_bf16=False)
        return PipelineQuantization(method, reports, self.denoiser)


@dataclass
class PipelineQuantization:
    """What quantizing a pipeline did: one report per component (None where the pipeline has none).
    The reports read as attributes too, by component name: `result.transformer`."""

    method: str
    reports: dict[str, QuantizationReport | None]
    primary: str                      # the denoiser: its backend and layer count lead the metrics

    def __getattr__(self, name: str) -> QuantizationReport | None:
        reports = self.__dict__.get("reports") or {}
        if name in reports:
            return reports[name]
        raise AttributeError(name)

    def _present(self) -> list[QuantizationReport]:
        return [r for r in self.reports.values() if r is not None]

    @property
    def weight_bytes(self) -> int:
        return sum(r.weight_bytes for r in self._present())

    @property
    def bf16_weight_bytes(self) -> int:
        return sum(r.bf16_weight_bytes for r in self._present())

    def metrics(self) -> dict:
        """The manifest's quantization metrics (the primary's backend and layers, each other's method,
        backend and bytes)."""
        main = self.reports[self.primary]
        others = {name: r for name, r in self.reports.items() if name != self.primary}
        out: dict = {"method": self.method, "backend": main.backend, "layers": main.layers}
        for name, r in others.items():
            out[f"{name}_method"] = r.method if r else None
            out[f"{name}_backend"] = r.backend if r else None
        out["weight_bytes"] = self.weight_bytes
        for name, r in self.reports.items():
            out[f"{name}_bytes"] = r.weight_bytes if r else None
        out["bf16_weight_bytes"] = self.bf16_weight_bytes
        out["ratio_to_bf16"] = round(self.weight_bytes / self.bf16_weight_bytes, 4) if self.bf16_weight_bytes else None
        return out


def quantization_skip_patterns(settings) -> tuple[str, ...]:
    """User-listed module-name patterns (VIDEOSTUDIO_QUANTIZATION_SKIP, comma-separated) left in bf16."""
    return tuple(p.strip() for p in (getattr(settings, "quantization_skip", "") or "").split(",") if p.strip())
