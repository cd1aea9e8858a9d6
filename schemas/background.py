"""`background:` in a brief: what replaces everything behind the person in a video.

One of five shapes, told apart by the key it has:

    {color: "#0b5fff"}                 a flat colour
    {image: <bucket key>, fit: cover}  a still, scaled to cover the frame (or fit inside it: contain)
    {video: <bucket key>}              a clip, looped when shorter than the video and cut when longer
    {blur: 12}                         the video's own background, blurred (radius in pixels at 1080p)
    {matte: true, format: webm}        no background: the person with an alpha channel (WebM VP9 or ProRes 4444 MOV)

Every shape also takes the mask options of `MaskOptions` (feathering, temporal smoothing, spill suppression).
Bad values raise pydantic errors whose type is the error code (`invalid_color`, `unsupported_matte_format`,
`invalid_background`); schemas/brief.py keeps those codes as they are.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, field_validator
from pydantic_core import PydanticCustomError

MATTE_FORMATS = ("webm", "mov")  # VP9 with alpha in WebM; ProRes 4444 with alpha in QuickTime
BACKGROUND_KINDS = ("color", "image", "video", "blur", "matte")
_HEX = re.compile(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
# A few names people type; anything else is a hex colour.
NAMED_COLORS = {"black": "#000000", "white": "#ffffff", "green": "#00b140", "blue": "#0b5fff", "gray": "#808080",
                "grey": "#808080"}


def parse_color(value: str) -> tuple[int, int, int]:
    """'#0b5fff', '0b5fff', '#fff' or a name in NAMED_COLORS → (r, g, b); `invalid_color` otherwise."""
    text = NAMED_COLORS.get(value.strip().lower(), value.strip()) if isinstance(value, str) else value
    match = _HEX.match(text) if isinstance(text, str) else None
    if match is None:
        raise PydanticCustomError("invalid_color", "'{value}' is not a colour: give #rrggbb, #rgb or one of {names}",
                                  {"value": value, "names": ", ".join(sorted(NAMED_COLORS))})
    digits = match.group(1)
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)


def _bucket_key(value: str, what: str) -> str:
    if not value or value.startswith("/") or ".." in value.split("/"):
        raise PydanticCustomError("invalid_key", "{what} key '{key}' must be a relative bucket key",
                                  {"what": what, "key": value})
    if value.startswith("inbox/"):
        raise PydanticCustomError("invalid_key", "{what} key '{key}' is under inbox/, which only takes briefs",
                                  {"what": what, "key": value})
    return value


class MaskOptions(BaseModel):
    """How the person's mask is made from the segmenter's output (every background shape takes these)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feather: float = Field(default=2.0, ge=0, le=20, description=(
        "Softness of the mask's edge, in pixels at 1080p (scaled with the frame)."))
    smoothing: float = Field(default=0.6, ge=0, lt=1, description=(
        "Temporal smoothing: the weight of the previous frames' mask where the picture did not change (0: none). "
        "Lowered where the frame moves, so moving edges do not trail."))
    spill: Literal["auto", "on", "off"] = Field(default="auto", description=(
        "Colour-spill suppression near the edges: auto turns it on when the backdrop is a green or blue screen."))

    @field_validator("spill", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `on` / `off` as true / false.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class ColorBackground(MaskOptions):
    color: str = Field(description="#rrggbb, #rgb, or black, white, green, blue, gray.")

    @field_validator("color", mode="before")
    @classmethod
    def _valid(cls, value: Any) -> str:
        if not isinstance(value, str):
            raise PydanticCustomError("invalid_color", "a colour is a string like '#0b5fff', got '{value}'",
                                      {"value": value})
        r, g, b = parse_color(value)
        return f"#{r:02x}{g:02x}{b:02x}"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return parse_color(self.color)


class ImageBackground(MaskOptions):
    image: str = Field(description="Bucket key of a still (PNG, JPEG, WebP, …).")
    fit: Literal["cover", "contain"] = Field(default="cover", description=(
        "cover: scaled to fill the frame and cropped; contain: scaled to fit inside it, the rest `fill`."))
    fill: str = Field(default="#000000", description="The colour around a `contain` image.")

    @field_validator("image")
    @classmethod
    def _key(cls, value: str) -> str:
        return _bucket_key(value, "background image")

    @field_validator("fill", mode="before")
    @classmethod
    def _fill(cls, value: Any) -> str:
        r, g, b = parse_color(value)
        return f"#{r:02x}{g:02x}{b:02x}"


class VideoBackground(MaskOptions):
    video: str = Field(description="Bucket key of a clip; looped when shorter than the video, cut when longer. "
                       "Scaled to cover the frame. Its sound is not used.")

    @field_validator("video")
    @classmethod
    def _key(cls, value: str) -> str:
        return _bucket_key(value, "background video")


class BlurBackground(MaskOptions):
    blur: float = Field(gt=0, le=200, description="Blur radius in pixels at 1080p (scaled with the frame).")


class MatteBackground(MaskOptions):
    matte: Literal[True] = Field(description="true: the person over transparency.")
    format: str = Field(default="webm", description="webm (VP9 with alpha) or mov (ProRes 4444 with alpha).")

    @field_validator("matte", mode="before")
    @classmethod
    def _form_true(cls, value: Any) -> Any:
        # A multipart form field arrives as text (`background.matte=true`): read it as a boolean field would be.
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        return value

    @field_validator("format")
    @classmethod
    def _known(cls, value: str) -> str:
        if value.lower() not in MATTE_FORMATS:
            raise PydanticCustomError("unsupported_matte_format", "matte format '{value}' is not supported: use "
                                      "{formats}", {"value": value, "formats": " or ".join(MATTE_FORMATS)})
        return value.lower()


def _kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return next((k for k in BACKGROUND_KINDS if k in type(value).model_fields), None)
    if isinstance(value, dict):
        return next((k for k in BACKGROUND_KINDS if k in value), None)
    return None


def _one_shape(value: Any) -> Any:
    """Exactly one of the shape keys, with a clear error (the union's own would list every shape's failure)."""
    if isinstance(value, BaseModel):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError("invalid_background", "background is a mapping with one of {kinds}, got '{value}'",
                                  {"kinds": ", ".join(BACKGROUND_KINDS), "value": value})
    present = [k for k in BACKGROUND_KINDS if k in value]
    if len(present) != 1:
        raise PydanticCustomError("invalid_background", "background needs exactly one of {kinds}; got {present}",
                                  {"kinds": ", ".join(BACKGROUND_KINDS), "present": ", ".join(present) or "none"})
    return value


Background = Annotated[
    Union[
        Annotated[ColorBackground, Tag("color")],
        Annotated[ImageBackground, Tag("image")],
        Annotated[VideoBackground, Tag("video")],
        Annotated[BlurBackground, Tag("blur")],
        Annotated[MatteBackground, Tag("matte")],
    ],
    Discriminator(_kind),
    BeforeValidator(_one_shape),
]

# The pydantic error types above that are error codes of their own (schemas/brief.py keeps them).
BACKGROUND_CODES = frozenset({"invalid_color", "unsupported_matte_format", "invalid_background"})


def background_keys(background: Any) -> list[str]:
    """The bucket keys a background reads (its image or clip)."""
    if isinstance(background, ImageBackground):
        return [background.image]
    if isinstance(background, VideoBackground):
        return [background.video]
    return []
