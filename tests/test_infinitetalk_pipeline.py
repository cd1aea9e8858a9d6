"""InfiniteTalk sampling on tiny random components (CPU, 32×32, 2 steps, chunks of 9 frames).

The weights are random, so what is checked is the plumbing: chunk counts and frame totals, the motion
frames the next chunk is conditioned on, re-referencing, guidance passes, cancellation, the colour anchor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from functions.infinitetalk_audio import frame_windows
from functions.infinitetalk_chunks import plan_chunks
from functions.infinitetalk_pipeline import (
    colour_drift,
    guided_velocity,
    iter_talking,
    match_colour,
    render_talking,
    tiny_infinitetalk_components,
)

SIZE = 32
STEPS = 2
CHUNK = 9
TOTAL_3 = 22  # chunk_frames 9, motion 1: 9 + 8 + 5 new frames = 3 chunks (the last 1 + 5 → 9, 3 surplus)


@pytest.fixture(autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def components():
    return tiny_infinitetalk_components(seed=0)


def features(c, frames=64, seed=1):
    cfg = c.transformer.config
    return torch.randn(frames, cfg.audio_layers, cfg.audio_dim, generator=torch.Generator().manual_seed(seed))


def reference_image(seed=0, shape=(40, 48)):
    return (np.random.default_rng(seed).random((*shape, 3)) * 255).astype(np.uint8)


def render(c, **overrides):
    feats = overrides.pop("features", None)
    feats = features(c) if feats is None else feats
    kwargs = dict(reference=reference_image(), audio_windows=lambda s, n: frame_windows(feats, s, n),
                  total_frames=TOTAL_3, prompt="a person talking", negative_prompt="blurry", height=SIZE, width=SIZE,
                  steps=STEPS, chunk_frames=CHUNK, motion_frames=1, seed=0)
    kwargs.update(overrides)
    return render_talking(c, **kwargs)


class TransformerSpy:
    """Records the keyword inputs of every transformer pass."""

    def __init__(self, transformer):
        self.calls: list[dict] = []
        transformer.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, _args, kwargs):
        self.calls.append({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()})


def spy_vae(c, method):
    """Wrap `c.vae.<method>` to record (input, output)."""
    original = getattr(c.vae, method)
    records = []

    def wrapped(x, *args, **kwargs):
        out = original(x, *args, **kwargs)
        records.append((x.detach().clone(), out))
        return out

    setattr(c.vae, method, wrapped)
    return records


def test_three_chunks_give_exactly_total_frames(components):
    assert len(plan_chunks(TOTAL_3, chunk_frames=CHUNK, motion_frames=1)) == 3
    spy = TransformerSpy(components.transformer)
    out = render(components)
    assert out.shape == (TOTAL_3, SIZE, SIZE, 3) and out.dtype == np.uint8
    assert len(spy.calls) == 3 * STEPS * 3  # three chunks × steps × (cond, drop-text, uncond)
    assert all(call["hidden_states"].shape == (1, 12, 3, 4, 4) for call in spy.calls)  # 4 + 4 mask + 4 condition
    audio = [call["audio_embeds"] for call in spy.calls]
    assert all(a.shape == (1, CHUNK, 5, 3, 6) for a in audio)
    assert sum(bool(a.abs().sum() == 0) for a in audio) == 3 * STEPS  # the uncond pass: all-zero audio


def test_iterator_yields_each_chunks_new_frames(components):
    feats = features(components)
    pieces = list(iter_talking(components, reference=reference_image(),
                               audio_windows=lambda s, n: frame_windows(feats, s, n), total_frames=TOTAL_3,
                               prompt="talking", height=SIZE, width=SIZE, steps=STEPS, chunk_frames=CHUNK,
                               motion_frames=1))
    assert [(c.new_start, c.new_frames) for c, _ in pieces] == [(0, 9), (9, 8), (17, 5)]
    assert [f.shape[0] for _, f in pieces] == [9, 8, 5]
    np.testing.assert_array_equal(np.concatenate([f for _, f in pieces]), render(components, prompt="talking",
                                                                                 negative_prompt=""))


def test_next_chunk_is_conditioned_on_the_previous_chunks_tail(components):
    """Motion 5 frames (→ 2 latent frames): chunk k+1's first two latent frames, at every pass, are the
    VAE encoding of chunk k's last five decoded frames (colour-anchored, as emitted); the I2V condition
    and the CLIP embedding are the reference's again (re-referencing)."""
    total, motion = 16, 5  # 9 + 4 + 3 new frames: three chunks starting at 0, 4, 8
    chunks = plan_chunks(total, chunk_frames=CHUNK, motion_frames=motion)
    assert [c.start for c in chunks] == [0, 4, 8]
    spy = TransformerSpy(components.transformer)
    encoded = spy_vae(components, "encode")
    out = render(components, total_frames=total, motion_frames=motion)
    assert out.shape[0] == total

    tails = [(x, o) for x, o in encoded if x.shape[2] == motion]
    assert len(tails) == 2  # chunks 1 and 2 (chunk 0's motion frame is the reference alone)
    per_chunk = 3 * STEPS
    for k, (tail_in, tail_out) in enumerate(tails, start=1):
        prev = chunks[k - 1]
        # the encoded pixels are the previous chunk's decoded frames start_k .. start_k + 4; those it
        # emitted are in the output (with motion 5 > stride 4, chunk 2's tail also holds frame 8, which
        # chunk 1 re-decoded from its motion latents but chunk 0 emitted)
        assert chunks[k].start + motion == prev.end
        emitted = [f for f in range(chunks[k].start, prev.end) if f >= prev.new_start]
        assert len(emitted) == (motion if k == 1 else motion - 1)
        pixels = torch.from_numpy(out[emitted]).permute(3, 0, 1, 2).float() / 127.5 - 1
        np.testing.assert_allclose(tail_in[0][:, [f - chunks[k].start for f in emitted]].numpy(), pixels.numpy(),
                                   atol=1 / 127.5 + 1e-5)
        latent = tail_out.latent_dist.mode()  # tiny VAE: latents_mean 0, std 1
        for call in spy.calls[k * per_chunk:(k + 1) * per_chunk]:
            torch.testing.assert_close(call["hidden_states"][:, :4, :2], latent)
    first = spy.calls[0]
    for call in spy.calls[per_chunk:]:
        torch.testing.assert_close(call["hidden_states"][:, 4:], first["hidden_states"][:, 4:])  # mask + condition
        torch.testing.assert_close(call["encoder_hidden_states_image"], first["encoder_hidden_states_image"])
    # chunk 0: its first latent frame is the reference frame's own encoding
    ref_latent = [o for x, o in encoded if x.shape[2] == 1][0].latent_dist.mode()
    torch.testing.assert_close(first["hidden_states"][:, :4, :1], ref_latent)


def test_changing_one_chunk_changes_the_next(components):
    """Chunk 1 reaches chunk 2 only through its motion frames: perturb what chunk 1 decodes and chunk 2
    changes, with the same seed, audio and reference; chunk 0 does not."""
    base = render(components)
    inner = components.vae.decode
    calls = {"n": 0}

    def perturbed(z, *args, **kwargs):
        calls["n"] += 1
        out = inner(z, *args, **kwargs)
        return (out[0] * 0.5,) if calls["n"] == 2 else out

    components.vae.decode = perturbed
    changed = render(components)
    assert calls["n"] == 3
    np.testing.assert_array_equal(changed[:9], base[:9])
    assert not np.array_equal(changed[9:17], base[9:17])
    assert not np.array_equal(changed[17:], base[17:])


def test_video_to_video_rereferences_each_chunk_from_the_source(components):
    source = [reference_image(seed=100 + i) for i in range(TOTAL_3)]
    asked = []

    def frame_at(index):
        asked.append(index)
        return source[index]

    spy = TransformerSpy(components.transformer)
    out = render(components, reference=frame_at)
    assert out.shape == (TOTAL_3, SIZE, SIZE, 3)
    assert asked == [c.start for c in plan_chunks(TOTAL_3, chunk_frames=CHUNK, motion_frames=1)] == [0, 8, 16]
    per_chunk = 3 * STEPS
    images = [spy.calls[k * per_chunk]["encoder_hidden_states_image"] for k in range(3)]
    conditions = [spy.calls[k * per_chunk]["hidden_states"][:, 8:] for k in range(3)]
    for a, b in zip(images, images[1:]):
        assert not torch.allclose(a, b)
    for a, b in zip(conditions, conditions[1:]):
        assert not torch.allclose(a, b)


def test_same_seed_same_frames(components):
    a, b = render(components), render(components)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, render(components, seed=1))


def test_guidance_formula():
    """cond/drop-text/uncond as in the official vanilla CFG; text 1 → the official's drop-audio branch."""
    values = {(True, True): 3.0, (False, True): 5.0, (True, False): 11.0, (False, False): 17.0}
    asked = []

    def predict(text, audio):
        asked.append((text, audio))
        return torch.tensor(values[(text, audio)])

    v = guided_velocity(predict, 5.0, 4.0)
    assert asked == [(True, True), (False, True), (False, False)]
    assert v.item() == pytest.approx(17 + 5 * (3 - 5) + 4 * (5 - 17))
    asked.clear()
    assert guided_velocity(predict, 1.0, 4.0).item() == pytest.approx(11 + 4 * (3 - 11))
    assert asked == [(True, True), (True, False)]
    asked.clear()
    assert guided_velocity(predict, 5.0, 1.0).item() == pytest.approx(5 + 5 * (3 - 5))
    assert asked == [(True, True), (False, True)]
    # the three-pass formula with audio 1 is the same number
    assert 17 + 5 * (3 - 5) + 1 * (5 - 17) == pytest.approx(5 + 5 * (3 - 5))
    asked.clear()
    assert guided_velocity(predict, 1.0, 1.0).item() == 3.0 and asked == [(True, True)]


def test_guidance_scales_change_the_result_and_the_pass_count(components):
    one = dict(total_frames=CHUNK)  # a single chunk
    spy = TransformerSpy(components.transformer)
    base = render(components, **one)
    assert len(spy.calls) == 3 * STEPS
    passes = {}
    results = {}
    for text, audio in [(3.0, 4.0), (5.0, 2.0), (1.0, 4.0), (5.0, 1.0), (1.0, 1.0)]:
        n = len(spy.calls)
        results[(text, audio)] = render(components, text_guidance=text, audio_guidance=audio, **one)
        passes[(text, audio)] = (len(spy.calls) - n) // STEPS
    assert passes == {(3.0, 4.0): 3, (5.0, 2.0): 3, (1.0, 4.0): 2, (5.0, 1.0): 2, (1.0, 1.0): 1}
    assert not np.array_equal(results[(3.0, 4.0)], base), "text guidance has an effect"
    assert not np.array_equal(results[(5.0, 2.0)], base), "audio guidance has an effect"


def test_audio_changes_the_result(components):
    a = render(components, total_frames=CHUNK)
    b = render(components, total_frames=CHUNK, features=features(components, seed=7))
    assert not np.array_equal(a, b)


class Stop(Exception):
    pass


def test_on_step_sequence(components):
    seen = []
    render(components, on_step=lambda chunk, step, total: seen.append((chunk.index, step, total)))
    assert seen == [(k, s, STEPS) for k in range(3) for s in range(STEPS + 1)]


def test_on_step_raising_stops_between_steps(components):
    spy = TransformerSpy(components.transformer)
    decoded = spy_vae(components, "decode")

    def cancel(chunk, step, total):
        if chunk.index == 0 and step == 1:
            raise Stop

    with pytest.raises(Stop):
        render(components, on_step=cancel)
    assert len(spy.calls) == 3  # one step's three passes, then nothing
    assert decoded == []


def test_on_step_raising_stops_between_chunks(components):
    spy = TransformerSpy(components.transformer)
    decoded = spy_vae(components, "decode")
    feats = features(components)
    got = []

    def cancel(chunk, step, total):
        if chunk.index == 1 and step == 0:
            raise Stop

    it = iter_talking(components, reference=reference_image(), audio_windows=lambda s, n: frame_windows(feats, s, n),
                      total_frames=TOTAL_3, prompt="talking", height=SIZE, width=SIZE, steps=STEPS,
                      chunk_frames=CHUNK, motion_frames=1, on_step=cancel)
    with pytest.raises(Stop):
        for chunk, frames in it:
            got.append(chunk.index)
    assert got == [0]  # the first chunk came out; the second never started
    assert len(spy.calls) == STEPS * 3 and len(decoded) == 1


def test_match_colour_moves_chunk_statistics_to_the_reference():
    from functions.infinitetalk_pipeline import rgb_to_lab

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 16, 16, generator=g) * 2 - 1
    video = (torch.rand(3, 5, 16, 16, generator=g) * 0.6 + 0.2).clamp(-1, 1)  # brighter, flatter
    matched = match_colour(video, ref)

    def stats(x):
        lab = rgb_to_lab((x.reshape(3, -1).T + 1) / 2)
        return lab.mean(0), lab.std(0)

    (m_ref, s_ref), (m_out, s_out), (m_in, _) = stats(ref), stats(matched), stats(video)
    assert (m_out - m_ref).abs().max() < 0.2 * (m_in - m_ref).abs().max()
    assert ((s_out - s_ref).abs() / s_ref).max() < 0.1  # not exact: lab→rgb clips out-of-gamut colours
    torch.testing.assert_close(match_colour(video, ref, 0.0), video)


def test_colour_drift_measures_a_slope_per_minute():
    ref = np.full((8, 8, 3), 128, np.uint8)
    steady = np.repeat(ref[None], 50, axis=0)
    assert colour_drift(steady, ref, 25) == pytest.approx(0.0, abs=1e-9)
    offset = steady.copy()
    offset[..., 0] = 160  # a constant shift is no drift
    assert colour_drift(offset, ref, 25) == pytest.approx(0.0, abs=1e-6)
    drifting = steady.copy()
    drifting[..., 0] = (128 + np.arange(50) // 2)[:, None, None]  # red rises by 1 every 2 frames
    assert colour_drift(drifting, ref, 25) > 100  # ΔE per minute (2 s of video rising several ΔE)
    assert colour_drift(steady[:1], ref, 25) == 0.0


def test_colour_anchor_reduces_drift_on_drifting_chunks(components):
    """A VAE decoder that tints every chunk further (red up, blue down: the kind of accumulating
    shift long renders show) drifts without the anchor; with it each chunk is pulled back."""
    inner = components.vae.decode
    calls = {"n": 0}

    def tinting(z, *args, **kwargs):
        out = inner(z, *args, **kwargs)
        shift = 0.2 * calls["n"]
        calls["n"] += 1
        video = out[0].clone()
        video[:, 0] += shift
        video[:, 2] -= shift
        return (video.clamp(-1, 1),)

    components.vae.decode = tinting
    ref = reference_image()
    total = 9 + 8 * 5  # six chunks: enough for the trend to dominate the tiny model's frame-to-frame noise
    free = render(components, total_frames=total, reference=ref, colour_anchor=False)
    calls["n"] = 0
    anchored = render(components, total_frames=total, reference=ref, colour_anchor=True)
    drift_free, drift_anchored = colour_drift(free, ref, 25), colour_drift(anchored, ref, 25)
    assert drift_free > 0
    assert abs(drift_anchored) < 0.25 * drift_free, (drift_free, drift_anchored)


def test_rejects_bad_arguments(components):
    with pytest.raises(ValueError):
        render(components, height=30)
    with pytest.raises(ValueError):
        render(components, steps=0)
    with pytest.raises(ValueError):
        render(components, audio_windows=lambda s, n: torch.zeros(n - 1, 5, 3, 6))
    with pytest.raises(ValueError):
        render(components, motion_frames=2)
