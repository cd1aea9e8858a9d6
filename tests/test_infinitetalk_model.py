"""InfiniteTalk's transformer (functions/models/infinitetalk.py) and its official-checkpoint loading
(functions/models/infinitetalk_keys.py): tiny random configs on CPU, the real 14B layout on the meta device."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

from functions.models.infinitetalk import (
    INFINITETALK_14B_CONFIG,
    InfiniteTalkAudioAttention,
    InfiniteTalkTransformer,
    audio_parameter_names,
    group_audio_windows,
    latent_frames_for,
    official_wan_config_to_diffusers,
    tiny_infinitetalk_config,
    video_frames_for,
)
from functions.models import infinitetalk_keys
from functions.models.infinitetalk_keys import (
    PUBLISHED_AUDIO_KEYS,
    export_official_state,
    load_infinitetalk_into,
    load_infinitetalk_state,
    load_infinitetalk_transformer,
    model_to_official_name,
    official_audio_keys,
    official_to_model_names,
    official_wan_base_keys,
)
from schemas.errors import VideostudioError

BATCH, LATENT_FRAMES, HEIGHT, WIDTH = 2, 3, 4, 6  # 3 latent frames = 9 video frames; 2×3 tokens per frame
WAN_KEYS = [k for k in INFINITETALK_14B_CONFIG if not k.startswith(("audio_", "vae_"))]


def tiny_model(seed: int = 0) -> InfiniteTalkTransformer:
    torch.manual_seed(seed)
    model = InfiniteTalkTransformer(**tiny_infinitetalk_config()).eval()
    with torch.no_grad():  # diffusers' init leaves nothing zero, but make every weight matter at the same scale
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def inputs(seed: int = 1, batch: int = BATCH) -> dict[str, torch.Tensor]:
    cfg = tiny_infinitetalk_config()
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, cfg["in_channels"], LATENT_FRAMES, HEIGHT, WIDTH, generator=g),
        timestep=torch.tensor([700.0, 30.0][:batch]),
        encoder_hidden_states=torch.randn(batch, 512, cfg["text_dim"], generator=g),
        encoder_hidden_states_image=torch.randn(batch, 5, cfg["image_dim"], generator=g),
        audio_embeds=torch.randn(batch, video_frames_for(LATENT_FRAMES), cfg["audio_window"], cfg["audio_layers"],
                                 cfg["audio_dim"], generator=g),
    )


def run(model: torch.nn.Module, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**kwargs, return_dict=False)[0]


# --- forward -------------------------------------------------------------------------------------

def test_forward_shape_audio_effect_and_null_audio() -> None:
    model, x = tiny_model(), inputs()
    out = run(model, **x)
    assert out.shape == (BATCH, tiny_infinitetalk_config()["out_channels"], LATENT_FRAMES, HEIGHT, WIDTH)
    assert torch.isfinite(out).all()
    other = dict(x, audio_embeds=x["audio_embeds"] + torch.randn_like(x["audio_embeds"]))
    assert (run(model, **other) - out).abs().max() > 1e-3  # audio conditions the prediction
    null = run(model, **dict(x, audio_embeds=None))
    assert torch.equal(null, run(model, **dict(x, audio_embeds=torch.zeros_like(x["audio_embeds"]))))
    assert (null - out).abs().max() > 1e-3
    # one clip's audio is shared across the batch
    shared = dict(x, audio_embeds=x["audio_embeds"][:1])
    assert torch.equal(run(model, **shared)[0], out[0])
    # a PEFT-style scale in attention_kwargs is accepted (no adapters: no effect); return_dict works
    assert torch.equal(model(**x, attention_kwargs={"scale": 1.0}).sample, out)


def test_bad_audio_shapes_and_config_are_refused() -> None:
    model, x = tiny_model(), inputs()
    with pytest.raises(ValueError, match="F_video=9"):
        run(model, **dict(x, audio_embeds=x["audio_embeds"][:, :8]))
    with pytest.raises(ValueError, match="audio_window_vf"):
        InfiniteTalkTransformer(**dict(tiny_infinitetalk_config(), audio_window_vf=7))
    assert latent_frames_for(81) == 21 and video_frames_for(21) == 81
    with pytest.raises(ValueError):
        latent_frames_for(80)


def test_later_frame_windows_follow_the_official_grouping() -> None:
    # entry = 100·video frame + window position, so each merged window can be read back
    frames, window = video_frames_for(3), 5
    code = (100 * torch.arange(frames)[:, None] + torch.arange(window)[None, :]).float()
    audio = code[None, :, :, None, None].expand(1, frames, window, 2, 3)
    first, later = group_audio_windows(audio, vae_time_stride=4)
    assert first.shape == (1, 1, 5, 2, 3) and later.shape == (1, 2, 8, 2, 3)
    assert first[0, 0, :, 0, 0].tolist() == [0, 1, 2, 3, 4]
    for j in range(2):  # latent frame j + 1: video frames 4j+1 … 4j+4
        f = 4 * j + 1
        expected = [100 * f + w for w in (0, 1, 2)] + [100 * (f + 1) + 2, 100 * (f + 2) + 2] \
            + [100 * (f + 3) + w for w in (2, 3, 4)]
        assert later[0, j, :, 1, 2].tolist() == expected


def test_audio_tokens_of_a_latent_frame_come_from_its_own_video_frames() -> None:
    model, x = tiny_model(), inputs()
    kw = dict(batch=BATCH, latent_frames=LATENT_FRAMES, device=torch.device("cpu"), dtype=torch.float32)
    with torch.no_grad():
        base = model.audio_context(x["audio_embeds"], **kw)
        assert base.shape == (BATCH, LATENT_FRAMES, 4, 10)
        for latent, video in ((0, [0]), (1, [1, 2, 3, 4]), (2, [5, 6, 7, 8])):
            for frame in video:
                audio = x["audio_embeds"].clone()
                audio[:, frame] += 1.0
                changed = (model.audio_context(audio, **kw) - base).abs().amax(dim=(0, 2, 3)) > 0
                assert changed.tolist() == [i == latent for i in range(LATENT_FRAMES)], (latent, frame)
        # window entries the merged later-frame windows leave out change nothing
        for frame, unused in ((1, [3, 4]), (2, [0, 1, 3, 4]), (3, [0, 1, 3, 4]), (4, [0, 1])):
            audio = x["audio_embeds"].clone()
            audio[:, frame, unused] += 1.0
            assert torch.equal(model.audio_context(audio, **kw), base), frame


def test_audio_cross_attention_is_frame_local() -> None:
    torch.manual_seed(0)
    attn = InfiniteTalkAudioAttention(dim=16, context_dim=10, heads=2).eval()
    frames, per_frame = 4, 6
    hidden = torch.randn(2, frames * per_frame, 16)
    context = torch.randn(2, frames, 3, 10)
    with torch.no_grad():
        out = attn(hidden, context)
        for t in range(frames):
            moved = context.clone()
            moved[:, t] += torch.randn(2, 3, 10)
            delta = (attn(hidden, moved) - out).abs().amax(dim=(0, 2)).reshape(frames, per_frame)
            assert (delta[t] > 1e-4).all()
            assert torch.equal(delta[torch.arange(frames) != t], torch.zeros(frames - 1, per_frame))


def test_without_audio_contribution_it_is_diffusers_wan() -> None:
    """The block/model forwards written here reproduce diffusers' exactly once the audio residual is zero."""
    model, x = tiny_model(), inputs()
    wan = WanTransformer3DModel(**{k: tiny_infinitetalk_config()[k] for k in WAN_KEYS}).eval()
    audio = set(audio_parameter_names(model))
    wan.load_state_dict({k: v for k, v in model.state_dict().items() if k not in audio}, strict=True)
    with torch.no_grad():
        for block in model.blocks:
            block.audio_cross_attn.proj.weight.zero_()
            block.audio_cross_attn.proj.bias.zero_()
    x_wan = {k: v for k, v in x.items() if k != "audio_embeds"}
    assert torch.equal(run(model, **x), run(wan, **x_wan))


# --- official checkpoints ------------------------------------------------------------------------

def write_official(model: InfiniteTalkTransformer, folder) -> tuple:
    """The model's weights as the official files: Wan base shards with an index, and the audio file."""
    base, audio = export_official_state(model.state_dict())
    names = sorted(base)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[: len(names) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": names[len(names) // 2:]}
    base_dir = folder / "Wan2.1-I2V-tiny"
    base_dir.mkdir()
    for file, keys in shards.items():
        save_file({k: base[k].contiguous() for k in keys}, str(base_dir / file))
    index = {"metadata": {}, "weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (base_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    audio_file = folder / "infinitetalk.safetensors"
    save_file({k: v.contiguous() for k, v in audio.items()}, str(audio_file))
    return base_dir, audio_file, base, audio


def test_official_layout_round_trip_is_exact(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(infinitetalk_keys, "_CHUNK_BYTES", 4096)  # many partial loads per shard
    model, x = tiny_model(seed=3), inputs()
    base_dir, audio_file, base, audio = write_official(model, tmp_path)
    cfg = tiny_infinitetalk_config()
    assert {k: tuple(v.shape) for k, v in base.items()} == official_wan_base_keys(cfg)
    assert {k: tuple(v.shape) for k, v in audio.items()} == official_audio_keys(cfg)

    loaded = load_infinitetalk_transformer(base_dir, audio_file, dtype=torch.float32, device="cpu", config=cfg)
    assert not loaded.training
    state = loaded.state_dict()
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(run(loaded, **x), run(model, **x))

    # the same in memory, into a fresh model
    fresh = load_infinitetalk_into(InfiniteTalkTransformer(**cfg).eval(), base, audio)
    assert torch.equal(run(fresh, **x), run(model, **x))

    # bf16 loading keeps diffusers' fp32 modules in fp32
    half = load_infinitetalk_transformer(base_dir, audio_file, dtype=torch.bfloat16, config=cfg)
    assert half.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert half.blocks[0].audio_cross_attn.q_linear.weight.dtype == torch.bfloat16
    assert half.blocks[0].scale_shift_table.dtype == torch.float32
    assert half.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    half_out = run(half, **{k: v if k == "timestep" else v.to(torch.bfloat16) for k, v in x.items()})
    assert half_out.dtype == torch.bfloat16
    reference = run(model, **x)
    assert (half_out.float() - reference).abs().max() < 0.05 * reference.abs().max()


def test_infinitetalk_keys_override_base_keys_as_in_the_official_merge(tmp_path) -> None:
    model = tiny_model(seed=4)
    base, audio = export_official_state(model.state_dict())
    patched = dict(audio, **{"blocks.1.ffn.2.bias": torch.full_like(base["blocks.1.ffn.2.bias"], 7.0)})
    state = load_infinitetalk_state(base, patched)
    assert torch.equal(state["blocks.1.ffn.net.2.bias"], torch.full_like(base["blocks.1.ffn.2.bias"], 7.0))
    # a `model.diffusion_model.` wrapper (single-file repacks) is dropped
    wrapped = {f"model.diffusion_model.{k}": v for k, v in base.items()}
    assert load_infinitetalk_state(wrapped, audio).keys() == model.state_dict().keys()
    # a .pth audio file reads too
    torch.save(audio, tmp_path / "infinitetalk.pth")
    base_file = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in base.items()}, str(base_file))
    loaded = load_infinitetalk_transformer(base_file, tmp_path / "infinitetalk.pth", dtype=torch.float32,
                                           config=tiny_infinitetalk_config())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("fault", ["wrong_shape", "missing_audio", "missing_base", "extra"])
def test_mismatches_raise_avatar_weights_incompatible(fault: str, tmp_path) -> None:
    model = tiny_model()
    base, audio = export_official_state(model.state_dict())
    if fault == "wrong_shape":
        audio["blocks.1.audio_cross_attn.kv_linear.weight"] = torch.zeros(32, 11)
        named = "blocks.1.audio_cross_attn.kv_linear.weight"
    elif fault == "missing_audio":
        del audio["audio_proj.proj1_vf.weight"]
        named = "audio_proj.proj1_vf.weight"
    elif fault == "missing_base":
        del base["blocks.0.cross_attn.k_img.weight"]
        named = "blocks.0.cross_attn.k_img.weight"
    else:
        audio["blocks.0.audio_cross_attn.k_norm.weight"] = torch.ones(16)
        named = "blocks.0.audio_cross_attn.k_norm.weight"
    fresh = InfiniteTalkTransformer(**tiny_infinitetalk_config())
    with pytest.raises(VideostudioError) as caught:
        load_infinitetalk_into(fresh, base, audio)
    assert caught.value.code == "avatar_weights_incompatible"
    assert named in caught.value.message
    if fault == "missing_base":  # the same from files: nothing is loaded
        save_file({k: v.contiguous() for k, v in base.items()}, str(tmp_path / "base.safetensors"))
        save_file({k: v.contiguous() for k, v in audio.items()}, str(tmp_path / "it.safetensors"))
        with pytest.raises(VideostudioError) as caught:
            load_infinitetalk_transformer(tmp_path / "base.safetensors", tmp_path / "it.safetensors",
                                          config=tiny_infinitetalk_config())
        assert caught.value.code == "avatar_weights_incompatible" and named in caught.value.message


def test_unreadable_or_absent_files(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(VideostudioError) as caught:
        load_infinitetalk_transformer(bad, bad, config=tiny_infinitetalk_config())
    assert caught.value.code == "avatar_weights_incompatible"
    with pytest.raises(VideostudioError) as caught:
        load_infinitetalk_transformer(tmp_path / "nowhere", bad, config=tiny_infinitetalk_config())
    assert caught.value.code == "model_unavailable"


def test_hub_ids_offline_fail_cleanly(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for base, audio in (("Wan-AI/Wan2.1-I2V-14B-480P", "MeiGen-AI/InfiniteTalk:single/infinitetalk.safetensors"),
                        (tmp_path, "MeiGen-AI/InfiniteTalk:single/infinitetalk.safetensors")):
        with pytest.raises(VideostudioError) as caught:
            load_infinitetalk_transformer(base, audio, config=tiny_infinitetalk_config())
        assert caught.value.code == "model_unavailable" and "HF_HUB_OFFLINE" in caught.value.message
    with pytest.raises(VideostudioError) as caught:  # neither a path nor a hub file
        load_infinitetalk_transformer(tmp_path, "infinitetalk.safetensors", config=tiny_infinitetalk_config())
    assert caught.value.code == "model_unavailable"


def test_real_14b_layout_on_the_meta_device() -> None:
    cfg = INFINITETALK_14B_CONFIG
    with torch.device("meta"):
        model = InfiniteTalkTransformer(**cfg)
        wan = WanTransformer3DModel(**{k: cfg[k] for k in WAN_KEYS})
    params = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    audio_names = set(audio_parameter_names(model))

    # the published audio file: 330 tensors, 2.49 B parameters, consumed exactly by the audio modules
    assert len(PUBLISHED_AUDIO_KEYS) == 10 + 40 * 8
    assert sum(math.prod(s) for s in PUBLISHED_AUDIO_KEYS.values()) == 2_487_168_000
    assert PUBLISHED_AUDIO_KEYS["audio_proj.proj1.weight"] == (512, 5 * 12 * 768)
    assert PUBLISHED_AUDIO_KEYS["audio_proj.proj1_vf.weight"] == (512, 8 * 12 * 768)
    assert PUBLISHED_AUDIO_KEYS["blocks.39.audio_cross_attn.kv_linear.weight"] == (10240, 768)
    audio_map = official_to_model_names(PUBLISHED_AUDIO_KEYS)
    assert set(audio_map.values()) == audio_names
    assert all(params[audio_map[k]] == s for k, s in PUBLISHED_AUDIO_KEYS.items())

    # the Wan base names, through diffusers' converter, are exactly the Wan transformer's parameters
    base_keys = official_wan_base_keys(cfg)
    base_map = official_to_model_names(base_keys)
    converted = {base_map[k]: s for k, s in base_keys.items()}
    assert converted == {k: tuple(v.shape) for k, v in wan.state_dict().items()}
    assert converted == {k: s for k, s in params.items() if k not in audio_names}
    assert all(model_to_official_name(new) == old for old, new in {**base_map, **audio_map}.items())
    assert len(params) == len(base_keys) + len(PUBLISHED_AUDIO_KEYS)

    # the official Wan2.1-I2V-14B-480P config.json gives the same config
    official = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 5120, "eps": 1e-06,
                "ffn_dim": 13824, "freq_dim": 256, "in_dim": 36, "model_type": "i2v", "num_heads": 40,
                "num_layers": 40, "out_dim": 16, "text_len": 512}
    assert official_wan_config_to_diffusers(official) == cfg


# --- training ------------------------------------------------------------------------------------

def test_gradient_checkpointing_matches_plain_backward() -> None:
    x = inputs(batch=1)
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(seed=5).train()
        calls = []
        if checkpointing:
            model.enable_gradient_checkpointing()
            inner = model._gradient_checkpointing_func
            model._gradient_checkpointing_func = lambda block, *args: calls.append(block) or inner(block, *args)
        out = model(**x).sample
        assert len(calls) == (len(model.blocks) if checkpointing else 0)
        out.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys()
    assert "blocks.0.audio_cross_attn.kv_linear.weight" in plain and "audio_proj.proj1_vf.weight" in plain
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_save_pretrained_round_trip(tmp_path) -> None:
    model, x = tiny_model(seed=6), inputs()
    model.save_pretrained(tmp_path / "it")
    again = InfiniteTalkTransformer.from_pretrained(tmp_path / "it").eval()
    assert type(again.blocks[0]).__name__ == "InfiniteTalkTransformerBlock"
    assert again.config.audio_window_vf == 8
    assert torch.equal(run(again, **x), run(model, **x))
