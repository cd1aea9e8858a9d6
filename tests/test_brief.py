"""parse_brief: valid briefs of both kinds, and one specific error code for each kind of mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.batch import is_batch_key
from schemas.brief import MAX_BRIEF_BYTES, MAX_PROMPT_CHARS, RenderBrief, TrainBrief, brief_json_schema, parse_brief
from schemas.errors import VideostudioError

REPO = Path(__file__).resolve().parents[1]


def error_code(data: bytes | str, filename: str = "brief.yaml") -> str:
    if isinstance(data, str):
        data = data.encode()
    with pytest.raises(VideostudioError) as exc:
        parse_brief(data, filename)
    assert exc.value.message  # every error explains itself
    return exc.value.code


# -- valid briefs ------------------------------------------------------------

def test_yaml_render_brief_kind_defaults_to_render() -> None:
    brief = parse_brief(b"prompt: A serene mountain landscape at dawn\nsteps: 8\nwidth: 96\nheight: 64\n")
    assert isinstance(brief, RenderBrief)
    assert brief.kind == "render"
    assert brief.prompt == "A serene mountain landscape at dawn"
    assert (brief.steps, brief.width, brief.height) == (8, 96, 64)
    assert brief.preset == "balanced"
    assert brief.fps == 30


def test_json_render_brief() -> None:
    doc = {"prompt": "  a cat  ", "preset": "fast", "seed": 7, "num_frames": 25,
           "webhook": {"url": "https://example.com/hook"}}
    brief = parse_brief(json.dumps(doc).encode(), "inbox/cat.json")
    assert isinstance(brief, RenderBrief)
    assert brief.prompt == "a cat"  # whitespace stripped
    assert brief.preset == "fast"
    assert brief.seed == 7
    assert brief.num_frames == 25
    assert str(brief.webhook.url) == "https://example.com/hook"
    assert brief.webhook.events == ["job.succeeded", "job.failed"]


def test_json_extension_is_case_insensitive_and_bom_is_accepted() -> None:
    assert parse_brief(b'{"prompt": "x"}', "BRIEF.JSON").prompt == "x"
    assert parse_brief(b'\xef\xbb\xbf{"prompt": "x"}', "brief.json").prompt == "x"
    assert parse_brief(b"\xef\xbb\xbfprompt: x\n", "brief.yaml").prompt == "x"


def test_unicode_prompt() -> None:
    assert parse_brief("prompt: 山の朝焼け 🌄\n".encode()).prompt == "山の朝焼け 🌄"


def test_train_brief() -> None:
    brief = parse_brief(b"kind: train\navatar: john\nvideo: uploads/john.mp4\nmixed_precision: fp16\nepochs: 2\n")
    assert isinstance(brief, TrainBrief)
    assert brief.avatar == "john"
    assert brief.video == "uploads/john.mp4"
    assert brief.mixed_precision == "fp16"
    assert brief.epochs == 2
    assert brief.backend == "mochi-lora"


def test_train_brief_rejects_bad_mixed_precision() -> None:
    assert error_code("kind: train\navatar: john\nmixed_precision: fp32\n") == "invalid_field_value"


def test_train_brief_requires_avatar() -> None:
    assert error_code("kind: train\nvideo: uploads/john.mp4\n") == "missing_field"


def test_train_brief_rejects_render_only_fields() -> None:
    assert error_code("kind: train\navatar: john\nprompt: hello\n") == "unknown_field"


@pytest.mark.parametrize("video", ["/etc/passwd", "../outside.mp4", "uploads/../../x.mp4"])
def test_train_brief_rejects_unsafe_video_key(video: str) -> None:
    assert error_code(f"kind: train\navatar: john\nvideo: '{video}'\n") == "invalid_key"


def test_example_briefs_parse() -> None:
    examples = sorted((REPO / "examples").glob("*.yaml"))
    assert examples, "the repo ships example briefs"
    for path in examples:
        if is_batch_key(path.name):  # a batch of briefs (README "Batches"): every item must be valid
            from functions.batch_file import parse_batch_file

            plan = parse_batch_file(path.read_bytes(), path.name)
            assert plan.entries and all(e.error is None for e in plan.entries), (path, plan.entries)
            continue
        brief = parse_brief(path.read_bytes(), path.name)
        assert brief.kind in ("render", "train", "compose"), path


def test_brief_json_schema_has_both_kinds() -> None:
    schema = brief_json_schema()
    assert isinstance(schema, dict)
    json.dumps(schema)  # serializable
    defs = schema.get("$defs", {})
    assert "RenderBrief" in defs and "TrainBrief" in defs
    assert "prompt" in defs["RenderBrief"]["properties"]
    assert "avatar" in defs["TrainBrief"]["required"]
    text = json.dumps(schema)
    assert '"render"' in text and '"train"' in text


# -- error codes -------------------------------------------------------------

def test_invalid_yaml() -> None:
    assert error_code("prompt: [unclosed\nsteps: 3\n") == "invalid_yaml"
    assert error_code("prompt: !!python/object:os.system x\n") == "invalid_yaml"  # safe_load refuses tags


def test_invalid_json() -> None:
    assert error_code('{"prompt": "x",', "brief.json") == "invalid_json"
    # YAML that is not JSON is still judged as JSON by its extension
    assert error_code("prompt: x\n", "brief.json") == "invalid_json"


@pytest.mark.parametrize("doc", [
    "prompt: x\nsteps: many\n",
    "prompt: x\nwidth: wide\n",
    "prompt: 5\n",
    "prompt: x\nwebhook: not-a-mapping\n",
])
def test_invalid_field_type(doc: str) -> None:
    assert error_code(doc) == "invalid_field_type"


def test_unknown_preset() -> None:
    assert error_code("prompt: x\npreset: ultra\n") == "unknown_preset"


@pytest.mark.parametrize("steps", [0, 1, -1, -100, 501])
def test_invalid_steps(steps: int) -> None:
    assert error_code(f"prompt: x\nsteps: {steps}\n") == "invalid_steps"


def test_valid_step_bounds() -> None:
    assert parse_brief(b"prompt: x\nsteps: 2\n").steps == 2
    assert parse_brief(b"prompt: x\nsteps: 500\n").steps == 500


@pytest.mark.parametrize("doc", ['prompt: ""\n', "prompt: '   '\n", "prompt: \"\\t\\n \"\n"])
def test_empty_prompt(doc: str) -> None:
    assert error_code(doc) == "empty_prompt"


@pytest.mark.parametrize("field,value", [("width", 100), ("height", 100), ("width", 0), ("width", 4096),
                                         ("height", -16)])
def test_invalid_dimensions(field: str, value: int) -> None:
    assert error_code(f"prompt: x\n{field}: {value}\n") == "invalid_dimensions"


def test_unknown_field() -> None:
    assert error_code("prompt: x\nprompts: typo\n") == "unknown_field"


def test_missing_prompt() -> None:
    assert error_code("steps: 10\n") == "missing_field"
    assert error_code('{"kind": "render"}', "b.json") == "missing_field"


@pytest.mark.parametrize("kind", ["banana", "5", "null", "RENDER"])
def test_unknown_kind(kind: str) -> None:
    assert error_code(f"kind: {kind}\nprompt: x\n") == "unknown_kind"


@pytest.mark.parametrize("data,filename", [
    (b"", "brief.yaml"), (b"   \n\n", "brief.yaml"), (b"# only a comment\n", "brief.yaml"), (b"~\n", "brief.yaml"),
    (b"", "brief.json"), (b"  \n", "brief.json"), (b"null", "brief.json"),
])
def test_empty_brief(data: bytes, filename: str) -> None:
    assert error_code(data, filename) == "empty_brief"


def test_brief_too_large() -> None:
    big = b"prompt: x\n# " + b"a" * MAX_BRIEF_BYTES + b"\n"
    assert len(big) > 1_000_000
    assert error_code(big) == "brief_too_large"
    assert error_code(big, "b.json") == "brief_too_large"


def test_prompt_too_long() -> None:
    assert error_code("prompt: " + "a" * (MAX_PROMPT_CHARS + 1) + "\n") == "prompt_too_long"
    assert len(parse_brief(("prompt: " + "a" * MAX_PROMPT_CHARS + "\n").encode()).prompt) == MAX_PROMPT_CHARS


@pytest.mark.parametrize("data", [b"prompt: caf\xe9\n", b"\xff\xfeprompt: x\n", b"prompt: \x80\x81\n"])
def test_invalid_encoding(data: bytes) -> None:
    assert error_code(data) == "invalid_encoding"


@pytest.mark.parametrize("data,filename", [
    (b"- prompt: x\n- prompt: y\n", "brief.yaml"),
    (b"just a sentence\n", "brief.yaml"),
    (b"42\n", "brief.yaml"),
    (b'[{"prompt": "x"}]', "brief.json"),
    (b'"a string"', "brief.json"),
])
def test_non_mapping_is_invalid_brief(data: bytes, filename: str) -> None:
    assert error_code(data, filename) == "invalid_brief"


def test_error_message_names_the_field() -> None:
    with pytest.raises(VideostudioError) as exc:
        parse_brief(b"prompt: x\nwidth: 100\n")
    assert "width" in exc.value.message
    assert exc.value.info().code == "invalid_dimensions"
