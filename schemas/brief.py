"""Briefs: what a user drops into `inbox/` (YAML or JSON).

`kind: render` (the default) asks for a generated video; `kind: train` asks for a
custom avatar trained from a video of a person. `parse_brief` turns raw bytes into
one of them or raises a `VideostudioError` with a specific code.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas.cache import CacheOptions
from schemas.background import BACKGROUND_CODES, BACKGROUND_KINDS, Background, background_keys
from schemas.defaults import DEFAULT_FPS, DEFAULT_GUIDANCE_SCALE, DEFAULT_HEIGHT, DEFAULT_WIDTH
from schemas.errors import VideostudioError

Preset = Literal["fast", "balanced", "quality"]
Quantization = Literal[
    "bf16", "fp8", "fp8-per-channel", "fp8-static", "fp8-dynamic", "int8", "nf4", "auto"
]
WebhookEventType = Literal[
    "job.succeeded", "job.failed", "job.cancelled", "stage.started", "stage.succeeded", "stage.failed"
]

MAX_PROMPT_CHARS = 10_000  # far above any text encoder's window; bounds manifest size
MAX_SIDE = 2048
MAX_BRIEF_BYTES = 1_000_000
MAX_SCRIPT_CHARS = 5_000  # about five minutes of speech; functions/speech.py enforces it on what is spoken
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
DEFAULT_BACKEND = "mochi-lora"


class WebhookSpec(BaseModel):
    """Where to POST job events. Signed with the bucket's Standard Webhooks secret."""

    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl
    events: list[WebhookEventType] = Field(default_factory=lambda: ["job.succeeded", "job.failed"])


class _BriefBase(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    model: str | None = Field(
        default=None,
        description="`tiny` (random weights, offline, output is noise), a diffusers Mochi repo id, "
        "or a local path. Defaults to VIDEOSTUDIO_MODEL.",
    )
    seed: int = Field(default=42, ge=0, le=2**63 - 1)
    webhook: WebhookSpec | None = None


def _relative_key(value: str | None, what: str) -> str | None:
    if value is not None and (value.startswith("/") or ".." in value.split("/")):
        raise PydanticCustomError("invalid_key", "{what} key '{key}' must be a relative bucket key",
                                  {"what": what, "key": value})
    return value


class RenderBrief(_BriefBase):
    """A video request: a prompt rendered with Mochi 1 through diffusers (optionally with a Mochi LoRA avatar),
    or a talking avatar speaking `script:` or `audio:`."""

    kind: Literal["render"] = "render"
    prompt: str | None = Field(default=None, description="What to render (Mochi). A talking avatar's brief "
                               "gives `script:` or `audio:` instead.")
    script: str | None = Field(default=None, description=(
        f"Text the avatar speaks (a talking avatar: wav2lip), spoken by `voice:`; at most {MAX_SCRIPT_CHARS:,} "
        "characters."))
    audio: str | None = Field(default=None, description=(
        "Bucket key of a recording the avatar speaks instead of a script: wav, mp3, m4a, ogg or flac, at most "
        "10 minutes."))
    voice: str | None = Field(default=None, description=(
        "The piper voice that speaks `script:`: a voice id (en_US-joe-medium, bundled, is the default; others are "
        "fetched where the network allows) or a local path to a voice's .onnx."))
    negative_prompt: str = ""
    preset: str = Field(default="balanced", description="fast | balanced | quality")
    duration_s: float | None = Field(
        default=None, gt=0, le=60, description="Snapped to 6k+1 frames at `fps`; defaults to the preset's."
    )
    num_frames: int | None = Field(
        default=None, ge=1, le=1801, description="Exact frame count (snapped to 6k+1); overrides duration_s."
    )
    steps: int | None = Field(default=None, description="Denoising steps; overrides the preset.")
    fps: int = Field(default=DEFAULT_FPS, ge=1, le=120)
    width: int = Field(default=DEFAULT_WIDTH, description="Multiple of 16.")
    height: int = Field(default=DEFAULT_HEIGHT, description="Multiple of 16.")
    guidance_scale: float = Field(default=DEFAULT_GUIDANCE_SCALE, ge=0, le=30)
    quantization: Quantization = "auto"
    gpus: int | None = Field(default=None, ge=1, le=8, description=(
        "GPUs one talking render spreads over (infinitetalk: context parallelism in one container); default: "
        "one, or more for long speech where the machine has them."))
    avatar: str | None = Field(default=None, pattern=ID_PATTERN)
    avatar_strength: float = Field(default=1.0, ge=0, le=2)
    background: Background | None = Field(default=None, description=(
        "Replace what is behind the person once the video is rendered (the compose stage): {color}, {image, fit}, "
        "{video}, {blur} or {matte: true} (schemas/background.py)."))
    # CacheOptions first: a mapping's mistakes (an unknown option) are then the errors reported, not "not a bool".
    cache: CacheOptions | bool = Field(default=True, description=(
        "Reuse a finished render with the same determinism key (model and weights, every pixel-changing parameter, "
        "seed, avatar weights, quantization, scheduler, speech): false renders afresh; a mapping sets options "
        "(`approximate: true`: start from a similar earlier prompt's latent, off by default)."))

    @property
    def cache_options(self) -> CacheOptions | None:
        """The cache options in force; None: `cache: false`."""
        if self.cache is False:
            return None
        return CacheOptions() if self.cache is True else self.cache

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value:
            raise PydanticCustomError("empty_prompt", "prompt must not be empty")
        if len(value) > MAX_PROMPT_CHARS:
            raise PydanticCustomError(
                "prompt_too_long", "prompt has {n} characters; the limit is {limit}",
                {"n": len(value), "limit": MAX_PROMPT_CHARS},
            )
        return value

    @field_validator("script")
    @classmethod
    def _script_within_limits(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value:
            raise PydanticCustomError("empty_script", "the script is empty: there is nothing to say")
        if len(value) > MAX_SCRIPT_CHARS:
            raise PydanticCustomError(
                "script_too_long", "the script has {n} characters; the limit is {limit}",
                {"n": len(value), "limit": MAX_SCRIPT_CHARS},
            )
        return value

    @field_validator("audio")
    @classmethod
    def _audio_key_is_safe(cls, value: str | None) -> str | None:
        return _relative_key(value, "audio")

    @model_validator(mode="after")
    def _prompt_or_speech(self) -> "RenderBrief":
        if self.script is not None and self.audio is not None:
            raise PydanticCustomError("conflicting_speech", "give either script: or audio:, not both")
        if self.voice is not None and self.script is None:
            raise PydanticCustomError("conflicting_speech", "voice: speaks a script: give script: with it")
        if self.talking and self.avatar is None:
            raise PydanticCustomError("missing_avatar", "script: and audio: are spoken by an avatar: give avatar: "
                                      "(a talking avatar, e.g. one trained with backend: wav2lip)")
        if self.prompt is None and not self.talking:
            raise PydanticCustomError("missing_field", "prompt: field required (or script:/audio: with a talking "
                                      "avatar)")
        return self

    @property
    def talking(self) -> bool:
        """The brief asks an avatar to speak."""
        return self.script is not None or self.audio is not None

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in ("fast", "balanced", "quality"):
            raise PydanticCustomError(
                "unknown_preset", "unknown preset {preset!r}; use fast, balanced or quality", {"preset": value}
            )
        return value

    @field_validator("steps")
    @classmethod
    def _positive_steps(cls, value: int | None) -> int | None:
        # Mochi's linear-quadratic sigma schedule divides by steps // 2: it needs at least 2.
        if value is not None and not 2 <= value <= 500:
            raise PydanticCustomError("invalid_steps", "steps must be between 2 and 500, got {steps}", {"steps": value})
        return value

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value % 16 or not 16 <= value <= MAX_SIDE:
            raise PydanticCustomError(
                "invalid_dimensions", "width and height must be multiples of 16 between 16 and {max}, got {v}",
                {"max": MAX_SIDE, "v": value},
            )
        return value


class Wav2LipOptions(BaseModel):
    """`backend: wav2lip` only: how its two networks are built and trained (the brief's epochs, batch_size,
    grad_accumulation, mixed_precision, checkpoint_every and max_steps apply to both loops)."""

    model_config = ConfigDict(extra="forbid")

    width: float = Field(default=1.0, ge=0.0625, le=1.0, description=(
        "Channel width of both networks: 1.0 is the public layout (36 M generator parameters); smaller widths "
        "train from scratch on a CPU."))
    base_weights: str | None = Field(default=None, description=(
        "A generator checkpoint to fine-tune (wav2lip.pth / wav2lip_gan.pth: a local path or 'owner/repo:file.pth' "
        "on the hub), loaded strictly; needs width 1.0. The public checkpoints are for non-commercial use only."))
    expert_weights: str | None = Field(default=None, description=(
        "A lip-sync expert checkpoint (lipsync_expert.pth) used as is; without one the expert trains first on the "
        "person's own footage."))
    learning_rate: float = Field(default=1e-4, gt=0, le=1, description="Adam's, for both networks (the paper's).")
    expert_epochs: int | None = Field(default=None, ge=1, le=1000, description="Epochs of the expert (default: epochs).")
    expert_max_steps: int | None = Field(default=None, ge=1, description="Stop the expert after this many steps.")
    gan: bool = Field(default=False, description="Add the visual-quality discriminator's GAN loss (weight 0.07).")
    freeze_batchnorm: bool = Field(default=False, description=(
        "BatchNorm on running statistics (fine-tuning public checkpoints on little data)."))


class InfiniteTalkOptions(BaseModel):
    """`backend: infinitetalk` only: which weights it builds on, how its LoRA trains, and how it renders (the
    brief's epochs, batch_size, grad_accumulation, mixed_precision, checkpoint_every and max_steps apply)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(default="Wan-AI/Wan2.1-I2V-14B-480P", description=(
        "The Wan2.1-I2V-14B-480P transformer in the original Wan format (a local folder or file, or a hub id), "
        "or `tiny` (random tiny weights of the same classes, offline: the output is noise)."))
    weights: str = Field(default="MeiGen-AI/InfiniteTalk:single/infinitetalk.safetensors", description=(
        "InfiniteTalk's audio weights, merged over the base (a local file or 'owner/repo:file'); loaded strictly."))
    components: str = Field(default="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", description=(
        "Where the VAE, the UMT5 text encoder and the CLIP image encoder come from (a diffusers-format folder or "
        "hub id)."))
    audio_encoder: str = Field(default="TencentGameMate/chinese-wav2vec2-base", description=(
        "The wav2vec2 speech encoder (a local folder or hub id)."))
    lora_rank: int = Field(default=16, ge=1, le=512)
    lora_alpha: float | None = Field(default=None, gt=0, description="Default: the rank.")
    learning_rate: float = Field(default=1e-4, gt=0, le=1)
    clip_frames: int = Field(default=33, ge=5, le=81, description=(
        "Frames per training clip (25 fps); snapped down to 4n+1, the Wan VAE's time grid."))
    height: int | None = Field(default=None, ge=16, le=1280, multiple_of=16, description=(
        "Frame height of training and renders; default: the 480p bucket for the video's shape (480×832 "
        "landscape, 832×480 portrait, 640×640 square)."))
    width: int | None = Field(default=None, ge=16, le=1280, multiple_of=16)
    steps: int = Field(default=40, ge=1, le=200, description="Denoising steps per chunk of a render.")
    text_guidance: float = Field(default=5.0, ge=1.0, le=20.0)
    audio_guidance: float = Field(default=4.0, ge=1.0, le=20.0)
    shift: float | None = Field(default=None, gt=0, le=50, description="Flow shift; default 7 at 480p, 11 at 720p.")
    chunk_frames: int = Field(default=81, ge=5, le=161, description="Frames per chunk of a long render (4n+1).")
    motion_frames: int = Field(default=9, ge=1, le=41, description=(
        "Frames each chunk shares with the one before it (4m+1)."))
    mode: Literal["image", "video"] = Field(default="image", description=(
        "image: every chunk starts from the avatar's reference image; video: from its reference footage at that "
        "chunk's time (sparse-frame dubbing: the person's own movement, re-lit and lip-synced)."))
    colour_anchor: bool = Field(default=True, description=(
        "Match each chunk's colour statistics to its reference (long videos drift in colour otherwise)."))
    gradient_checkpointing: bool = Field(default=True, description="Recompute activations in backward (less memory).")
    prompt: str = Field(default="A person is talking, looking at the camera, natural head movement.", max_length=500)
    negative_prompt: str = Field(default="blurry, distorted face, static, low quality, extra fingers", max_length=500)

    @field_validator("clip_frames")
    @classmethod
    def _snap_clip(cls, value: int) -> int:
        return value - (value - 1) % 4

    @model_validator(mode="after")
    def _frames_grid(self) -> InfiniteTalkOptions:
        for name in ("chunk_frames", "motion_frames"):
            if (getattr(self, name) - 1) % 4:
                raise ValueError(f"{name} must be 4n+1 (the Wan VAE's time grid), got {getattr(self, name)}")
        if self.motion_frames >= self.chunk_frames:
            raise ValueError("motion_frames must be fewer than chunk_frames")
        if (self.height is None) != (self.width is None):
            raise ValueError("give both height and width, or neither")
        return self


class TrainBrief(_BriefBase):
    """A custom-avatar request: a video of one person becomes a LoRA."""

    kind: Literal["train"]
    avatar: str = Field(pattern=ID_PATTERN, description="The avatar id to create.")
    video: str | None = Field(
        default=None, description="Bucket key of the training video (outside inbox/); "
        "a bare video dropped into inbox/ sets it implicitly."
    )
    extract_fps: float = Field(default=25, gt=0, le=60)
    backend: str = Field(default=DEFAULT_BACKEND, pattern=ID_PATTERN, description=(
        "The avatar backend that trains and renders the avatar (functions/backends): mochi-lora (a Mochi identity "
        "LoRA; renders prompts), wav2lip (a talking avatar on a CPU: moves the mouth) or infinitetalk (a talking avatar "
        "on Wan 14B, GPU: moves head, face and body with the speech). "
        "An unknown one fails the job with `unknown_backend`."))
    epochs: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=4, ge=1, le=256)
    learning_rate: float = Field(default=2.0e-5, gt=0, le=1)
    grad_accumulation: int = Field(default=1, ge=1, le=1024)
    mixed_precision: Literal["bf16", "fp16", "no"] = "bf16"
    lora_rank: int = Field(default=16, ge=1, le=512)
    lora_alpha: float | None = Field(default=None, gt=0)
    face_padding: float = Field(default=0.2, ge=0, le=1.0,
                                description="Margin around the face in the 512×512 crops (0 = tight).")
    resolution: int = Field(default=512, ge=16, le=512, multiple_of=16,
                            description="Training resolution: aligned crops are resized to this square.")
    clip_frames: int = Field(default=25, ge=1, le=163, description="Frames per training clip; snapped to 6k+1.")
    optimizer: Literal["auto", "adamw", "adamw8bit"] = Field(
        default="auto", description="auto: bitsandbytes AdamW8bit where it works, else torch AdamW.")
    checkpoint_every: int = Field(default=50, ge=1, description="Optimizer steps between checkpoints.")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many optimizer steps.")
    deploy: bool = Field(default=True, description="Deploy the avatar when training succeeds.")
    preview_steps: int = Field(default=30, ge=2, le=500, description="Denoising steps of the preview render.")
    wav2lip: Wav2LipOptions = Field(default_factory=Wav2LipOptions, description="backend: wav2lip's options.")
    infinitetalk: InfiniteTalkOptions = Field(default_factory=InfiniteTalkOptions,
                                              description="backend: infinitetalk's options.")

    @field_validator("video")
    @classmethod
    def _video_key_is_safe(cls, value: str | None) -> str | None:
        return _relative_key(value, "video")


class ComposeBrief(BaseModel):
    """A new background for a video already in the bucket: the person kept, everything behind them replaced."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    kind: Literal["compose"]
    video: str = Field(description="Bucket key of the video (outside inbox/), with or without sound.")
    background: Background = Field(description="What goes behind the person (schemas/background.py).")
    webhook: WebhookSpec | None = None

    @field_validator("video")
    @classmethod
    def _video_key_is_safe(cls, value: str) -> str:
        return _relative_key(value, "video")

    @property
    def keys(self) -> list[str]:
        """Every bucket key the brief reads."""
        return [self.video, *background_keys(self.background)]


Brief = Annotated[Union[RenderBrief, TrainBrief, ComposeBrief], Field(discriminator="kind")]
_BRIEF_ADAPTER: TypeAdapter[RenderBrief | TrainBrief | ComposeBrief] = TypeAdapter(Brief)

# pydantic error types that are ours (raised above) keep their name as the error code.
_OWN_CODES = {"empty_prompt", "prompt_too_long", "unknown_preset", "invalid_steps", "invalid_dimensions", "invalid_key",
              "empty_script", "script_too_long", "conflicting_speech", "missing_avatar", "missing_field",
              *BACKGROUND_CODES}


def brief_json_schema() -> dict[str, Any]:
    """JSON Schema for editors: either brief kind."""
    return _BRIEF_ADAPTER.json_schema()


def _load_document(data: bytes, filename: str) -> Any:
    if len(data) > MAX_BRIEF_BYTES:
        raise VideostudioError("brief_too_large", f"brief is {len(data)} bytes; the limit is {MAX_BRIEF_BYTES}")
    try:
        text = data.decode("utf-8-sig")  # editors on Windows often save UTF-8 with a BOM; json.loads rejects it
    except UnicodeDecodeError as exc:
        raise VideostudioError("invalid_encoding", f"brief is not UTF-8 text: {exc.reason}") from None
    if not text.strip():
        return None  # empty whatever the extension (json.loads would call it invalid JSON)
    if filename.lower().endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise VideostudioError("invalid_json", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        except (RecursionError, ValueError) as exc:  # nesting deeper than the parser's stack; an integer too long
            raise VideostudioError("invalid_json", f"not valid JSON: {_unparsable(exc)}") from None
    try:
        return yaml.safe_load(text)
    except (RecursionError, ValueError) as exc:
        raise VideostudioError("invalid_yaml", f"not valid YAML: {_unparsable(exc)}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise VideostudioError("invalid_yaml", f"not valid YAML: {problem}{at}") from None


def _unparsable(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).split(";")[0][:200]


def _code_for(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind in _OWN_CODES:
        return kind
    if kind == "union_tag_invalid":
        return "unknown_kind"
    if kind == "missing":
        return "missing_field"
    if kind == "extra_forbidden":
        return "unknown_field"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return "invalid_field_type"
    return "invalid_field_value"


def _document_loc(loc: tuple[Any, ...]) -> list[str]:
    """An error's place in the brief as written: without the tags pydantic adds for a tagged union (the brief's
    kind, a background's shape: `background.color.color` is the brief's `background.color`)."""
    path: list[str] = []
    tagged = False  # the part after `background` is the shape's tag, once
    for part in loc:
        if part in ("render", "train") or (path == [] and part == "compose"):
            continue
        if path == ["background"] and part in BACKGROUND_KINDS and not tagged:
            tagged = True
            continue
        path.append(str(part))
    return path


def validation_error_to_videostudio(exc: ValidationError) -> VideostudioError:
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:5]:
        where = ".".join(_document_loc(err["loc"])) or "brief"
        parts.append(f"{where}: {err['msg']}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    details = [{"loc": _document_loc(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in errors]
    return VideostudioError(_code_for(errors[0]), "; ".join(parts) + more, details=details)


def parse_brief(data: bytes, filename: str = "brief.yaml") -> RenderBrief | TrainBrief | ComposeBrief:
    """Parse and validate a brief; raise `VideostudioError` with a specific code."""
    document = _load_document(data, filename)
    if document is None:
        raise VideostudioError("empty_brief", "the brief is empty")
    if not isinstance(document, dict):
        raise VideostudioError("invalid_brief", f"a brief is a mapping of fields, got {type(document).__name__}")
    document.setdefault("kind", "render")
    try:
        return _BRIEF_ADAPTER.validate_python(document)
    except ValidationError as exc:
        raise validation_error_to_videostudio(exc) from None
