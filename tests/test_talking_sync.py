"""Does the mouth follow the speech? The wav2lip backend trained from scratch on the synthetic talking face
(tests/av_video.py: a real face whose drawn mouth opens with real piper speech, ~40 s), through the real
prepare, align, train and render stages, then made to speak held-out sentences it never heard.

The mouth opening read off the rendered frames must follow the new speech's loudness (r ≥ 0.6) and not an
unrelated take's (|r| ≤ 0.2): the generator learnt the mouth from the audio, not from the footage under it
(whose own drawn mouth follows the training take, and is replaced by the paste-back).
"""

from __future__ import annotations

import functools

import pytest

from av_video import AVCorpus, correlation, envelope_per_frame, mouth_opening, video_frames
from pipeline_jobs import make_runner, run_job

pytestmark = pytest.mark.slow

TRAIN = """\
kind: train
avatar: astro
video: uploads/astro.mp4
backend: wav2lip
epochs: 50
batch_size: 4
max_steps: 300
checkpoint_every: 100000
mixed_precision: "no"
seed: 1
wav2lip:
  width: 0.125
  learning_rate: 1.0e-3
  expert_max_steps: 60
"""


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    corpus = AVCorpus.build(tmp_path_factory.getbasetemp() / "av-corpus")
    root = tmp_path_factory.mktemp("bucket")
    runner = make_runner(root, {"uploads/astro.mp4": corpus.training_video, "uploads/heldout.wav": corpus.heldout_wav},
                         progress_interval_s=0.5)
    storage = runner.storage
    run = functools.partial(run_job, runner)
    trained = run("astro.yaml", TRAIN)
    assert trained.status.value == "succeeded", trained.error
    rendered = run("heldout.yaml", "avatar: astro\naudio: uploads/heldout.wav\n")
    assert rendered.status.value == "succeeded", rendered.error
    frames = list(video_frames(storage.path(rendered.outputs["video"])))
    return corpus, trained, rendered, mouth_opening(frames, corpus.still.landmarks)


def test_the_rendered_mouth_follows_held_out_speech_and_not_unrelated_audio(spoken):
    corpus, _, rendered, opening = spoken
    heldout = envelope_per_frame(corpus.heldout_wav)
    assert abs(len(opening) - len(heldout)) <= 1  # one frame per 40 ms of the speech
    r_heldout = correlation(opening, heldout)
    r_unrelated = correlation(opening, envelope_per_frame(corpus.training_wav))
    assert r_heldout >= 0.6, (r_heldout, r_unrelated)
    assert abs(r_unrelated) <= 0.2, (r_heldout, r_unrelated)
    assert rendered.stages["render"].metrics["frames"] == len(opening)
    print(f"mouth opening vs held-out speech r = {r_heldout:.3f}, vs unrelated speech r = {r_unrelated:.3f}")
