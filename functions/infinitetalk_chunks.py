"""InfiniteTalk's chunk plan: any number of output frames as overlapping Wan chunks (no torch).

InfiniteTalk (MeiGen-AI/InfiniteTalk, `wan/multitalk.py` `generate_infinitetalk`) streams long
speech through a Wan2.1 I2V model in chunks of `frame_num` = 81 frames (4n+1: the Wan VAE keeps
the first frame and packs every 4 after it into one latent frame). Each chunk after the first
starts `motion_frame` = 9 frames before the previous one ended: those 9 frames are the previous
chunk's last generated frames, VAE-encoded and written over the new chunk's first latent frames,
so the new chunk continues the motion; they are not emitted again. Chunk k>0 therefore adds
`frame_num - motion_frame` = 72 new frames.

The plan here reproduces that schedule with one difference at the end: the official always
renders a full 81-frame last chunk (reflect-padding the audio features) and cuts the video to the
audio's length afterwards. Here the last chunk is only as long as it must be: its motion frames
plus the frames still missing, snapped up to the next 4n+1 (at most 3 surplus frames, which are
generated and dropped from the end of that chunk; their audio windows are clamped to the last
audio frame by `frame_windows`). Chunks never exceed `chunk_frames`.

`motion_frames` must itself be 4m+1 (1, 5, 9, ...): the Wan VAE encodes 4m+1 frames to exactly
m+1 latent frames, which then cover the chunk's first 4m+1 frames, so the overwrite is aligned.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CHUNK_FRAMES = 81
DEFAULT_MOTION_FRAMES = 9


@dataclass(frozen=True)
class Chunk:
    """One chunk of a plan. Frame numbers are global (0 = the output's first frame).

    The chunk renders frames `start .. start + frames - 1` (a 4n+1 count) and contributes
    `new_start .. new_start + new_frames - 1` to the output. `new_start - start` leading frames are
    the previous chunk's motion frames (0 for the first chunk); any frames after
    `new_start + new_frames` are surplus from snapping the last chunk to 4n+1 and are dropped.
    """

    index: int
    start: int
    frames: int
    new_start: int
    new_frames: int

    @property
    def motion(self) -> int:
        """How many leading frames are conditioned on (and copied from) the previous chunk."""
        return self.new_start - self.start

    @property
    def surplus(self) -> int:
        """Frames rendered at the end of the chunk and dropped (only ever on the last chunk)."""
        return self.frames - self.motion - self.new_frames

    @property
    def latent_frames(self) -> int:
        return (self.frames - 1) // 4 + 1

    @property
    def end(self) -> int:
        """One past the last frame this chunk renders."""
        return self.start + self.frames


def snap_4n1(frames: int) -> int:
    """The smallest 4n+1 frame count ≥ `frames` (frames ≥ 1)."""
    if frames < 1:
        raise ValueError(f"frame count must be ≥ 1, got {frames}")
    return frames + (-(frames - 1)) % 4


def is_4n1(frames: int) -> bool:
    return frames >= 1 and (frames - 1) % 4 == 0


def plan_chunks(total_frames: int, *, chunk_frames: int = DEFAULT_CHUNK_FRAMES,
                motion_frames: int = DEFAULT_MOTION_FRAMES) -> list[Chunk]:
    """Overlapping chunks whose new frames are exactly `0 .. total_frames - 1`, each once.

    Consecutive chunks overlap by `motion_frames` (chunk k+1 starts `motion_frames` before chunk k
    ends); every chunk is 4n+1 frames and at most `chunk_frames`; one chunk when
    `total_frames ≤ chunk_frames` (snapped up to 4n+1, surplus dropped).
    """
    if total_frames < 1:
        raise ValueError(f"total_frames must be ≥ 1, got {total_frames}")
    if not is_4n1(chunk_frames):
        raise ValueError(f"chunk_frames must be 4n+1 (e.g. 81), got {chunk_frames}")
    if not is_4n1(motion_frames) or motion_frames >= chunk_frames:
        raise ValueError(f"motion_frames must be 4m+1 and below chunk_frames ({chunk_frames}), got {motion_frames}")

    if total_frames <= chunk_frames:
        return [Chunk(index=0, start=0, frames=snap_4n1(total_frames), new_start=0, new_frames=total_frames)]

    chunks = [Chunk(index=0, start=0, frames=chunk_frames, new_start=0, new_frames=chunk_frames)]
    stride = chunk_frames - motion_frames  # new frames a full follow-on chunk adds
    while (done := chunks[-1].new_start + chunks[-1].new_frames) < total_frames:
        start = chunks[-1].end - motion_frames
        remaining = total_frames - done
        if remaining > stride:
            frames, new = chunk_frames, stride
        else:  # the last chunk: only as long as it needs to be, snapped up to 4n+1
            frames, new = snap_4n1(motion_frames + remaining), remaining
        chunks.append(Chunk(index=len(chunks), start=start, frames=frames, new_start=done, new_frames=new))
    return chunks
