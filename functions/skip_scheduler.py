"""A flow-matching Euler scheduler that starts K steps into its schedule: what an approximate render denoises
with, from another render's latent after K steps (functions/latent_cache.py).

MochiPipeline sets the schedule itself (its linear-quadratic sigmas) and then loops over `scheduler.timesteps`;
dropping the first K timesteps and sigmas after `set_timesteps` makes it run exactly the last N − K steps of
that schedule, with every step the same as in a full render.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


class SkipFirstSteps(FlowMatchEulerDiscreteScheduler):
    skip: int = 0

    # The signature is the parent's: diffusers' retrieve_timesteps inspects it for `sigmas`.
    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device = None,
                      sigmas: list[float] | None = None, mu: float | None = None,
                      timesteps: list[float] | None = None) -> None:
        super().set_timesteps(num_inference_steps=num_inference_steps, device=device, sigmas=sigmas, mu=mu,
                              timesteps=timesteps)
        if not 0 <= self.skip < len(self.timesteps):
            raise ValueError(f"cannot skip {self.skip} of {len(self.timesteps)} steps")
        self.timesteps = self.timesteps[self.skip:]
        self.sigmas = self.sigmas[self.skip:]  # N + 1 values (the last is 0): step i goes from sigmas[i] to [i + 1]
        self.num_inference_steps = len(self.timesteps)


def skipping(scheduler, skip: int) -> SkipFirstSteps | None:
    """The pipeline's scheduler, starting `skip` steps in; None when it is not the flow-matching Euler one."""
    if type(scheduler) is not FlowMatchEulerDiscreteScheduler:
        return None
    skipper = SkipFirstSteps.from_config(scheduler.config)
    skipper.skip = skip
    return skipper
