"""The real-weights loading path of InfiniteTalk (`functions/models/infinitetalk_loading.py`), run on local
folders laid out as users' are: the transformer in the official Wan layout with the audio weights in their own
file, the VAE / UMT5 / CLIP / tokenizer / image processor in a diffusers-format folder, and a wav2vec2 folder.
The weights are the tiny random ones, so nothing downloads; the code is the one real checkpoints go through."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from functions.infinitetalk_audio import tiny_speech_encoder
from functions.infinitetalk_pipeline import tiny_infinitetalk_components
from functions.models.infinitetalk_keys import export_official_state
from functions.models.infinitetalk_loading import load_models
from schemas.brief import InfiniteTalkOptions
from schemas.errors import VideostudioError


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    speech = tiny_speech_encoder(seed=1)
    parts = tiny_infinitetalk_components(seed=1, audio_layers=speech.layers, audio_dim=speech.dim)
    base, audio = export_official_state(parts.transformer.state_dict())
    (root / "wan").mkdir()
    save_file({k: v.contiguous() for k, v in base.items()}, str(root / "wan" / "diffusion_pytorch_model.safetensors"))
    parts.transformer.save_config(str(root / "wan"))
    save_file({k: v.contiguous() for k, v in audio.items()}, str(root / "infinitetalk.safetensors"))
    components = root / "components"
    parts.vae.save_pretrained(str(components / "vae"))
    parts.text_encoder.save_pretrained(str(components / "text_encoder"))
    parts.tokenizer.save_pretrained(str(components / "tokenizer"))
    parts.image_encoder.save_pretrained(str(components / "image_encoder"))
    parts.image_processor.save_pretrained(str(components / "image_processor"))
    speech.model.save_pretrained(str(root / "wav2vec2"))
    speech.processor.save_pretrained(str(root / "wav2vec2"))
    options = InfiniteTalkOptions(base_model=str(root / "wan"), weights=str(root / "infinitetalk.safetensors"),
                                  components=str(components), audio_encoder=str(root / "wav2vec2"))
    return root, options, parts, speech


def test_local_folders_load_every_component_with_its_weights(folders):
    _, options, original, speech = folders
    models = load_models(options, device="cpu", dtype=torch.float32)
    assert models.random_weights is False
    loaded = models.components
    for name in ("transformer", "vae", "text_encoder", "image_encoder"):
        mine, theirs = getattr(loaded, name).state_dict(), getattr(original, name).state_dict()
        assert mine.keys() == theirs.keys(), name
        assert all(torch.equal(mine[k].float(), theirs[k].float()) for k in mine), name
    assert loaded.vae.use_tiling  # the renderer decodes tiled (the planner counts it so)
    wave = torch.randn(16000).numpy()
    assert torch.equal(models.speech.features(wave), speech.features(wave))


def test_an_audio_file_of_another_model_is_refused_by_name(folders, tmp_path):
    _, options, _, _ = folders
    save_file({}, str(tmp_path / "empty.safetensors"))  # an empty file: every audio key is missing
    with pytest.raises(VideostudioError) as refused:
        load_models(options.model_copy(update={"weights": str(tmp_path / "empty.safetensors")}), device="cpu",
                    dtype=torch.float32)
    assert refused.value.code == "avatar_weights_incompatible" and "missing" in refused.value.message


def test_a_missing_components_folder_is_model_unavailable(folders, tmp_path):
    _, options, _, _ = folders
    with pytest.raises(VideostudioError) as refused:
        load_models(options.model_copy(update={"components": str(tmp_path / "nowhere")}), device="cpu",
                    dtype=torch.float32)
    assert refused.value.code == "model_unavailable"
