"""InfiniteTalk's chunk plan: exact totals, no frame twice, motion-frame overlaps, 4n+1 chunks."""

from __future__ import annotations

import pytest

from functions.infinitetalk_chunks import Chunk, plan_chunks, snap_4n1


def check_plan(chunks: list[Chunk], total: int, chunk_frames: int, motion_frames: int) -> None:
    emitted = [f for c in chunks for f in range(c.new_start, c.new_start + c.new_frames)]
    assert emitted == list(range(total)), "every output frame exactly once, in order"
    for k, c in enumerate(chunks):
        assert c.index == k
        assert (c.frames - 1) % 4 == 0 and 1 <= c.frames <= chunk_frames, c
        assert c.start <= c.new_start and c.new_start + c.new_frames <= c.end, c
        assert 0 <= c.surplus <= 3, c
        if k < len(chunks) - 1:
            assert c.surplus == 0, "only the last chunk may render surplus frames"
    assert chunks[0].start == 0 and chunks[0].motion == 0
    for prev, nxt in zip(chunks, chunks[1:]):
        assert nxt.start == prev.end - motion_frames, "consecutive chunks overlap by the motion frames"
        assert nxt.motion == motion_frames and nxt.new_start == prev.end
    assert chunks[-1].new_start + chunks[-1].new_frames == total


@pytest.mark.parametrize("total", [1, 2, 5, 80, 81])
def test_one_chunk_up_to_chunk_frames(total):
    chunks = plan_chunks(total)
    assert len(chunks) == 1
    check_plan(chunks, total, 81, 9)
    assert chunks[0].frames == snap_4n1(total)


def test_82_frames_is_a_short_second_chunk():
    chunks = plan_chunks(82)
    check_plan(chunks, 82, 81, 9)
    assert [(c.start, c.frames, c.new_start, c.new_frames) for c in chunks] == [(0, 81, 0, 81), (72, 13, 81, 1)]
    assert chunks[1].surplus == 3  # 9 motion + 1 new = 10 frames, snapped up to 13


def test_161_frames():
    chunks = plan_chunks(161)
    check_plan(chunks, 161, 81, 9)
    # 81 + 72 = 153, then 8 more: 9 motion + 8 new = 17 frames, already 4n+1
    assert [(c.start, c.frames, c.new_frames) for c in chunks] == [(0, 81, 81), (72, 81, 72), (144, 17, 8)]


def test_exactly_three_full_chunks():
    total = 81 + 72 + 72
    chunks = plan_chunks(total)
    check_plan(chunks, total, 81, 9)
    assert [c.frames for c in chunks] == [81, 81, 81] and chunks[-1].surplus == 0
    assert len(plan_chunks(total + 1)) == 4


def test_1000_frames():
    chunks = plan_chunks(1000)
    check_plan(chunks, 1000, 81, 9)
    assert len(chunks) == 1 + -(-(1000 - 81) // 72)  # 14
    assert all(c.frames == 81 for c in chunks[:-1])


@pytest.mark.parametrize("chunk_frames,motion_frames", [(9, 1), (9, 5), (13, 5), (17, 9), (5, 1)])
@pytest.mark.parametrize("total", range(1, 60))
def test_small_configs_every_total(total, chunk_frames, motion_frames):
    check_plan(plan_chunks(total, chunk_frames=chunk_frames, motion_frames=motion_frames), total,
               chunk_frames, motion_frames)


@pytest.mark.parametrize("kwargs", [dict(total_frames=0), dict(total_frames=10, chunk_frames=80),
                                    dict(total_frames=10, motion_frames=8), dict(total_frames=10, motion_frames=81),
                                    dict(total_frames=10, chunk_frames=9, motion_frames=9)])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        plan_chunks(**kwargs)


def test_snap():
    assert [snap_4n1(n) for n in range(1, 11)] == [1, 5, 5, 5, 5, 9, 9, 9, 9, 13]
