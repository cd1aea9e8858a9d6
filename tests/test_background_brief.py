"""`background:` in briefs and the `kind: compose` brief: validation codes, and the route each job gets."""

from __future__ import annotations

import pytest

from core.storage import LocalStorage
from functions.routes import default_pipeline, route_for_input
from schemas.background import (
    BlurBackground,
    ColorBackground,
    ImageBackground,
    MatteBackground,
    VideoBackground,
    parse_color,
)
from schemas.brief import ComposeBrief, RenderBrief, brief_json_schema, parse_brief
from schemas.errors import VideostudioError


@pytest.mark.parametrize("text, kind", [
    ('{color: "#0b5fff"}', ColorBackground),
    ("{color: white}", ColorBackground),
    ("{image: uploads/p.png}", ImageBackground),
    ("{image: uploads/p.png, fit: contain, fill: '#fff'}", ImageBackground),
    ("{video: uploads/b.mp4}", VideoBackground),
    ("{blur: 12}", BlurBackground),
    ("{matte: true}", MatteBackground),
    ("{matte: true, format: MOV, feather: 0, smoothing: 0, spill: 'on'}", MatteBackground),
])
def test_each_background_shape_parses(text, kind):
    brief = parse_brief(f"avatar: ann\nscript: hi\nbackground: {text}\n".encode())
    assert isinstance(brief, RenderBrief) and isinstance(brief.background, kind)


def test_colours_are_normalised():
    assert parse_color("#FFF") == (255, 255, 255)
    assert ColorBackground(color="0B5FFF").color == "#0b5fff"
    assert ColorBackground(color="blue").rgb == (0x0B, 0x5F, 0xFF)
    assert MatteBackground(matte=True, format="MOV").format == "mov"
    # YAML 1.1 reads bare on/off as booleans.
    assert parse_brief(b"prompt: x\nbackground: {blur: 3, spill: off}\n").background.spill == "off"
    assert parse_brief(b"prompt: x\nbackground: {blur: 3, spill: on}\n").background.spill == "on"


@pytest.mark.parametrize("text, code", [
    ('{color: "#12345"}', "invalid_color"),
    ("{color: chartreuse-ish}", "invalid_color"),
    ("{color: 12}", "invalid_color"),
    ("{image: p.png, fill: nope}", "invalid_color"),
    ("{matte: true, format: gif}", "unsupported_matte_format"),
    ("{color: white, blur: 3}", "invalid_background"),
    ("{}", "invalid_background"),
    ("red", "invalid_background"),
    ("{blur: 0}", "invalid_field_value"),
    ("{image: ../secret.png}", "invalid_key"),
    ("{video: inbox/x.mp4}", "invalid_key"),
    ("{color: white, sparkle: 1}", "unknown_field"),
])
def test_bad_backgrounds_have_their_codes(text, code):
    with pytest.raises(VideostudioError) as info:
        parse_brief(f"prompt: a cat\nbackground: {text}\n".encode())
    assert info.value.code == code, info.value.message
    assert info.value.details[0]["loc"][0] == "background"


def test_a_compose_brief_needs_a_video_and_a_background():
    brief = parse_brief(b"kind: compose\nvideo: uploads/a.mp4\nbackground: {blur: 8}\n")
    assert isinstance(brief, ComposeBrief) and brief.keys == ["uploads/a.mp4"]
    assert parse_brief(b"kind: compose\nvideo: a.mp4\nbackground: {image: b.png}\n").keys == ["a.mp4", "b.png"]
    for text, code in [(b"kind: compose\nvideo: a.mp4\n", "missing_field"),
                       (b"kind: compose\nbackground: {blur: 8}\n", "missing_field"),
                       (b"kind: compose\nvideo: a.mp4\nbackground: {blur: 8}\nprompt: x\n", "unknown_field")]:
        with pytest.raises(VideostudioError) as info:
            parse_brief(text)
        assert info.value.code == code
    assert "compose" in str(brief_json_schema())


@pytest.mark.parametrize("name, text, route", [
    ("plain.yaml", "prompt: a cat\n", ["prepare", "render"]),
    ("bg.yaml", "prompt: a cat\nbackground: {color: white}\n", ["prepare", "render", "compose"]),
    ("talk.yaml", "avatar: ann\nscript: hi\nbackground: {matte: true}\n", ["prepare", "render", "compose"]),
    ("compose.yaml", "kind: compose\nvideo: a.mp4\nbackground: {blur: 4}\n", ["prepare", "compose"]),
    ("train.yaml", "kind: train\navatar: ann\nvideo: a.mp4\n", ["prepare", "align", "train", "render"]),
    ("broken.yaml", "prompt: a cat\nbackground: {color: nope}\n", ["prepare", "render"]),  # prepare fails it
])
def test_compose_is_in_the_route_only_when_the_brief_asks_for_a_background(tmp_path, name, text, route):
    storage = LocalStorage(tmp_path)
    storage.put_bytes(f"inbox/{name}", text.encode())
    pipeline = default_pipeline()
    kind = pipeline.classify(storage, f"inbox/{name}")
    assert route_for_input(storage, f"inbox/{name}", kind) == route
    assert pipeline.route_for(storage, f"inbox/{name}", kind) == route
