"""A talking avatar's render with `background:` (wav2lip, trained small on real footage): the route gains the
compose stage, the job's video is the composed one, its speech is the render's packet for packet, and the
speaker's face stays inside the mask."""

from __future__ import annotations

import numpy as np
import pytest

from functions.faces import NaiveDetector
from pipeline_jobs import TINY_WAV2LIP_TRAIN, drain, make_runner, submit
from tests.real_media import looped_talking_video
from tests.test_compose import audio_md5, decode, far_from_person

pytestmark = pytest.mark.slow



def test_a_wav2lip_render_with_a_background_is_composed_with_its_speech_untouched(tmp_path):
    video = looped_talking_video(tmp_path / "ann.mp4", seconds=32, side=360)
    runner = make_runner(tmp_path / "bucket", {"uploads/ann.mp4": video})
    trained = drain(runner, submit(runner, "ann.yaml", TINY_WAV2LIP_TRAIN))
    assert trained.status.value == "succeeded", trained.error
    job = drain(runner, submit(runner, "hello.yaml", 'avatar: ann\nscript: "Good morning, from a blue room."\n'
                               'background: {color: "#0b5fff"}\n'))
    assert job.status.value == "succeeded", job.error
    assert list(job.stages) == ["prepare", "render", "compose"]
    rendered = runner.storage.path(job.stages["render"].outputs["video"])
    composed = runner.storage.path(job.outputs["video"])
    assert composed != rendered and job.outputs["video"].startswith(f"jobs/{job.job_id}/compose/")
    assert audio_md5(composed) == audio_md5(rendered)
    source, out = decode(rendered), decode(composed).astype(np.int16)
    matte = decode(runner.storage.path(job.outputs["matte"]), pix_fmt="gray")
    assert len(source) == len(out) == len(matte) == job.stages["compose"].metrics["frames"]
    detector = NaiveDetector()
    for i in range(0, len(source), 5):
        faces = detector.detect(np.ascontiguousarray(source[i]))
        assert faces
        for x, y in max(faces, key=lambda f: f.area).landmarks:
            assert matte[i, int(y), int(x)] > 127
    far = far_from_person(matte)
    error = np.abs(out[far] - np.array((0x0B, 0x5F, 0xFF), np.int16))
    assert error.mean() < 2.0, error.mean()


def test_an_infinitetalk_render_with_a_background_goes_on_to_compose(tmp_path):
    """The tiny InfiniteTalk's frames are noise (random weights): render succeeds and hands its video on, and
    compose looks for the person in it and fails the job with no_person_found, as it must."""
    from tests.infinitetalk_jobs import tiny_train_brief

    video = looped_talking_video(tmp_path / "ann.mp4", clip="talking-3.mp4", seconds=32, side=160)
    runner = make_runner(tmp_path / "bucket", {"uploads/ann.mp4": video})
    trained = drain(runner, submit(runner, "ann.yaml", tiny_train_brief(avatar="ann", epochs=1, checkpoint_every=4)))
    assert trained.status.value == "succeeded", trained.error
    job = drain(runner, submit(runner, "hello.yaml", "avatar: ann\nscript: Hello there.\nbackground: {blur: 8}\n"))
    assert list(job.stages) == ["prepare", "render", "compose"]
    assert job.stages["render"].status.value == "succeeded"
    assert job.stages["render"].handoff["video_key"] == job.stages["render"].outputs["video"]
    assert (job.status.value, job.error.code) == ("failed", "no_person_found")
