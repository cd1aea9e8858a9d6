"""`backend: infinitetalk` end to end on the embedded default, tiny random weights on a CPU (issue 14):
real footage with its own speech → a LoRA, deployed with its reference image and footage → a script brief
renders an MP4 whose video and audio last the speech (± 1 frame), in several chunks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests import pipeline_jobs
from tests.pipeline_jobs import drain, submit
from tests.infinitetalk_jobs import tiny_train_brief
from tests.real_media import looped_talking_video

pytestmark = pytest.mark.slow

TRAIN = tiny_train_brief(avatar="ann", epochs=2, batch_size=8, checkpoint_every=4)


def streams(path: Path) -> dict[str, dict]:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                          "stream=codec_type,codec_name,duration,nb_read_frames,width,height", "-of", "json",
                          str(path)], check=True, capture_output=True)
    return {s["codec_type"]: s for s in json.loads(out.stdout)["streams"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    video = looped_talking_video(tmp_path_factory.mktemp("media") / "ann.mp4", clip="talking-3.mp4", seconds=32,
                                 side=160)
    runner = pipeline_jobs.make_runner(tmp_path_factory.mktemp("bucket"), {"uploads/ann.mp4": video})
    job = drain(runner, submit(runner, "ann.yaml", TRAIN))
    return runner, job


def test_training_makes_a_deployed_lora_avatar_with_its_references(trained):
    runner, job = trained
    assert job.status.value == "succeeded", job.error
    train = job.stages["train"]
    clips = train.metrics["clips"]
    assert clips["train"] >= 40 and clips["val"] >= 1 and clips["test"] >= 1, clips  # 32 s of 9-frame clips
    assert train.metrics["epochs_completed"] == 2 and len(train.metrics["train_loss"]) == 2
    assert train.metrics["steps"] == 2 * -(-clips["train"] // 8)
    assert train.metrics["base_test_loss"] is not None and train.metrics["quality_score"] is not None
    avatar = json.loads(runner.storage.get_bytes("avatars/ann/manifest.json"))
    assert avatar["backend"] == "infinitetalk" and avatar["talks"] is True
    assert {"reference_image", "reference", "options"} <= set(avatar["assets"])
    assert all(runner.storage.exists(key) for key in avatar["assets"].values())
    # The LoRA is on every attention, the audio cross-attention included.
    from safetensors.torch import load_file

    lora = load_file(str(runner.storage.root / avatar["weights_key"]))
    assert any(".attn1.to_q.lora_A" in k for k in lora) and any(".audio_cross_attn.q_linear.lora_A" in k for k in lora)
    # The train job's preview speaks the preview sentence with the new avatar.
    preview = streams(runner.storage.root / job.outputs["video"])
    assert set(preview) == {"video", "audio"} and preview["video"]["width"] == 32


def test_a_script_renders_a_talking_video_as_long_as_the_speech(trained):
    runner, _ = trained
    job = drain(runner, submit(runner, "hello.yaml", "avatar: ann\nscript: Hello there. This is a longer line, "
                                                    "so that the render needs three chunks or more.\n"))
    assert job.status.value == "succeeded", job.error
    plan = job.stages["prepare"]["handoff"]["plan"] if isinstance(job.stages["prepare"], dict) else \
        job.stages["prepare"].handoff["plan"]
    found = streams(runner.storage.root / job.outputs["video"])
    assert found["video"]["codec_name"] == "h264" and found["audio"]["codec_name"] == "aac"
    assert int(found["video"]["nb_read_frames"]) == plan["num_frames"]
    assert abs(plan["num_frames"] / 25 - plan["speech"]["duration_s"]) <= 1 / 25 + 1e-6
    render = job.stages["render"].metrics
    assert render["chunks"] >= 3 and render["frames"] == plan["num_frames"]


def test_the_render_uses_the_avatars_lora(trained):
    """The same speech with and without the avatar's adapter: the LoRA changes the frames (it was trained)."""
    from functions.infinitetalk_render import avatar_lora
    from functions.models.infinitetalk_loading import load_models
    from schemas.brief import InfiniteTalkOptions

    runner, _ = trained
    avatar = json.loads(runner.storage.get_bytes("avatars/ann/manifest.json"))
    models = load_models(InfiniteTalkOptions(base_model="tiny"), device="cpu")
    transformer = models.components.transformer
    weights = runner.storage.root / avatar["weights_key"]
    x = torch.randn(1, transformer.config.in_channels, 2, 4, 4)
    inputs = dict(hidden_states=x, timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 512, transformer.config.text_dim),
                  encoder_hidden_states_image=torch.randn(1, 3, transformer.config.image_dim),
                  audio_embeds=torch.randn(1, 5, 5, transformer.config.audio_layers, transformer.config.audio_dim),
                  return_dict=False)
    with torch.no_grad():
        plain = transformer(**inputs)[0]
        with avatar_lora(transformer, weights):
            adapted = transformer(**inputs)[0]
        after = transformer(**inputs)[0]
    assert not torch.allclose(plain, adapted)
    assert torch.equal(plain, after)  # the adapter is gone again: the cached transformer is shared


def test_a_brief_can_name_a_quantization_method(trained):
    runner, _ = trained
    job = drain(runner, submit(runner, "int8.yaml", "avatar: ann\nscript: Quantized hello.\nquantization: int8\n"))
    assert job.status.value == "succeeded", job.error
    quantization = job.stages["render"].metrics["quantization"]
    assert quantization["method"] == "int8" and quantization["layers"] > 0
    assert quantization["reason"] == "int8: named in the brief"


def test_gpus_spreads_the_render_over_processes(trained):
    """`gpus: 2` on a CPU: two gloo processes, the code path a container with two GPUs runs over NCCL."""
    runner, _ = trained
    text = "avatar: ann\nscript: Two ranks, one video.\nseed: 5\n"
    one = drain(runner, submit(runner, "one-rank.yaml", text))
    two = drain(runner, submit(runner, "two-ranks.yaml", text + "gpus: 2\n"))
    assert one.status.value == two.status.value == "succeeded", (one.error, two.error)
    assert one.stages["render"].metrics["ranks"] == 1 and two.stages["render"].metrics["ranks"] == 2
    assert streams(runner.storage.root / two.outputs["video"])["audio"]["codec_name"] == "aac"
    # The same speech? Piper's takes of one script can differ; when they match, so do the frames.
    speech = [runner.storage.get_bytes(j.stages["prepare"].handoff["plan"]["speech"]["key"]) for j in (one, two)]
    if speech[0] == speech[1]:
        frames = [subprocess.run(["ffmpeg", "-v", "error", "-i", str(runner.storage.root / j.outputs["video"]), "-f",
                                  "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
                  for j in (one, two)]
        assert frames[0] == frames[1]
