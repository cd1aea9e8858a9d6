"""An InfiniteTalk render spread over several processes (INFINITETALK-010), run here as 2 CPU processes over
gloo: the same code a container with `gpu="H100:N"` runs over NCCL. The frames equal a one-process render's,
progress comes back from rank 0, and a cancel stops every rank at the same step."""

from __future__ import annotations

import copy
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from functions.backends.infinitetalk import TARGET_MODULES
from functions.infinitetalk_render import SpeechRender, render_speech, render_speech_distributed
from functions.lora_training import add_lora
from functions.models.infinitetalk_loading import load_models
from schemas.brief import InfiniteTalkOptions
from tests.real_media import media_file

pytestmark = pytest.mark.slow

OPTIONS = InfiniteTalkOptions(base_model="tiny", height=32, width=32, steps=2, chunk_frames=17, motion_frames=5)


@pytest.fixture(scope="module")
def job_fields(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("multigpu")
    transformer = copy.deepcopy(load_models(OPTIONS, device="cpu").components.transformer)
    add_lora(transformer, 4, 4.0, seed=0, target_modules=TARGET_MODULES)
    transformer.save_lora_adapter(str(folder / "lora"), adapter_name="default", weight_name="lora.safetensors")
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(folder / "ref.png")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", "3", "-t", "2", "-i", str(media_file("speech-en.wav")),
                    str(folder / "speech.wav")], check=True)
    return dict(options_json=OPTIONS.model_dump_json(), lora=str(folder / "lora" / "lora.safetensors"),
                reference_image=str(folder / "ref.png"), reference_footage="", speech=str(folder / "speech.wav"),
                num_frames=50, seed=3, device="cpu", method="none")


def decoded(path: Path) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8)


def test_two_processes_render_the_same_frames_as_one(job_fields, tmp_path):
    one = render_speech(SpeechRender(**job_fields, output=str(tmp_path / "one.mp4")))
    reports: list[tuple[int, int, int]] = []
    job = SpeechRender(**job_fields, output=str(tmp_path / "two.mp4"), progress_file=str(tmp_path / "progress.jsonl"),
                       cancel_file=str(tmp_path / "cancel"))
    two = render_speech_distributed(job, 2, on_progress=lambda done, total, chunk: reports.append((done, total, chunk)))
    assert one.chunks == two.chunks == 4
    assert np.array_equal(decoded(tmp_path / "one.mp4"), decoded(tmp_path / "two.mp4"))
    assert np.array_equal(one.poster, two.poster)
    total = 4 * (OPTIONS.steps + 1)  # on_step is called with step 0 before each chunk and after every step
    assert [r[0] for r in reports] == sorted(r[0] for r in reports) and reports[-1][:2] == (OPTIONS.steps * 4,
                                                                                          OPTIONS.steps * 4)
    assert len(reports) == total


class Cancelled(Exception):
    pass


def test_a_cancel_stops_every_rank(job_fields, tmp_path):
    job = SpeechRender(**job_fields, output=str(tmp_path / "cancelled.mp4"),
                       progress_file=str(tmp_path / "progress.jsonl"), cancel_file=str(tmp_path / "cancel"))

    def on_progress(done: int, total: int, chunk: int) -> None:
        if chunk >= 1:  # inside the second chunk: the stage's job was cancelled
            raise Cancelled

    finished = threading.Event()

    def render() -> None:
        with pytest.raises(Cancelled):
            render_speech_distributed(job, 2, on_progress=on_progress)
        finished.set()

    worker = threading.Thread(target=render)
    worker.start()
    worker.join(timeout=120)
    assert finished.is_set(), "the ranks did not stop after the cancel"
    assert (tmp_path / "cancel").exists()
    chunks_seen = {line.split('"chunk": ')[1].rstrip("}") for line in (tmp_path / "progress.jsonl").read_text().splitlines()}
    assert "3" not in chunks_seen  # stopped before the last chunk
