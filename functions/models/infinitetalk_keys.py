"""The official InfiniteTalk checkpoints → `InfiniteTalkTransformer`, loaded strictly.

The official pipeline (MeiGen-AI/InfiniteTalk `wan/multitalk.py`) builds its `WanModel` and fills it with
`load_state_dict` (strict) from a merge: the seven Wan2.1-I2V-14B-480P shards
(`diffusion_pytorch_model-0000N-of-00007.safetensors`, original Wan key names such as
`blocks.0.self_attn.q.weight`, `patch_embedding.weight`, `img_emb.proj.1.weight`), then
`single/infinitetalk.safetensors` updated over them. That file holds the 330 audio tensors
(`PUBLISHED_AUDIO_KEYS`: `audio_proj.*` plus `blocks.N.audio_cross_attn.{q_linear,kv_linear,proj}.*` and
`blocks.N.norm_x.*`); the Wan weights were frozen while training, so it replaces no base key. Should a file
carry base keys anyway they override the base's, as in the official merge.

Here the merged official names are split: Wan names go through diffusers' own
`convert_wan_transformer_to_diffusers` (a pure renaming for Wan2.1 keys), the audio names map onto this
module's identically named audio modules. Loading is strict: every file key must land on a parameter,
every parameter must be filled, every shape must agree; anything else raises
`VideostudioError("avatar_weights_incompatible")` naming the first offending keys.

Sources (`load_infinitetalk_transformer`):
  * a local `.safetensors` file (or `.pt`/`.pth`/`.bin`, read weights-only);
  * a local directory: the shards listed by its `*.safetensors.index.json` (`weight_map`), else every
    `*.safetensors` in it; an official Wan `config.json` there (`_class_name: WanModel`) sets the config;
  * a hub repo `owner/repo` (the base: `snapshot_download` of its `diffusion_pytorch_model*` shards, index
    and `config.json`) or a hub file `owner/repo:path/in/repo` (`hf_hub_download`), e.g.
    `Wan-AI/Wan2.1-I2V-14B-480P` and `MeiGen-AI/InfiniteTalk:single/infinitetalk.safetensors`. With
    HF_HUB_OFFLINE set only the local hub cache is used.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

from functions.models.infinitetalk import (
    INFINITETALK_14B_CONFIG,
    InfiniteTalkTransformer,
    official_wan_config_to_diffusers,
)
from functions.models.strict_loading import named, raise_if_incompatible
from schemas.errors import VideostudioError

Shape = tuple[int, ...]
_MAX_NAMED = 4  # offending keys named per kind in an error message
_PREFIXES = ("model.diffusion_model.", "module.")  # wrappers some repacks add around the official names
_AUDIO_KEY = re.compile(r"^(audio_proj\.|blocks\.\d+\.(audio_cross_attn|norm_x)\.)")
# Keys of other Wan variants whose conversion is not a renaming (Wan-Animate): never InfiniteTalk's.
_FOREIGN_KEY = re.compile(r"(^|\.)(motion_encoder|face_adapter)\.")


def _audio_key_shapes(*, num_layers: int, dim: int, audio_window: int, audio_window_vf: int, audio_layers: int,
                      audio_dim: int, audio_inner_dim: int, audio_tokens: int, audio_token_dim: int,
                      norm_input: bool = True, norm_output: bool = True) -> dict[str, Shape]:
    """The audio tensors of the official module (multitalk_model.py `AudioProjModel`, `WanAttentionBlock`'s
    `audio_cross_attn` = attention.py `SingleStreamMutiAttention` with qkv_bias=True, qk_norm=False, and its
    `norm_x` = WanLayerNorm(dim, elementwise_affine=True))."""
    keys: dict[str, Shape] = {
        "audio_proj.proj1.weight": (audio_inner_dim, audio_window * audio_layers * audio_dim),
        "audio_proj.proj1.bias": (audio_inner_dim,),
        "audio_proj.proj1_vf.weight": (audio_inner_dim, audio_window_vf * audio_layers * audio_dim),
        "audio_proj.proj1_vf.bias": (audio_inner_dim,),
        "audio_proj.proj2.weight": (audio_inner_dim, audio_inner_dim),
        "audio_proj.proj2.bias": (audio_inner_dim,),
        "audio_proj.proj3.weight": (audio_tokens * audio_token_dim, audio_inner_dim),
        "audio_proj.proj3.bias": (audio_tokens * audio_token_dim,),
    }
    if norm_output:
        keys["audio_proj.norm.weight"] = keys["audio_proj.norm.bias"] = (audio_token_dim,)
    for i in range(num_layers):
        block = f"blocks.{i}."
        keys[block + "audio_cross_attn.q_linear.weight"] = (dim, dim)
        keys[block + "audio_cross_attn.q_linear.bias"] = (dim,)
        keys[block + "audio_cross_attn.kv_linear.weight"] = (2 * dim, audio_token_dim)
        keys[block + "audio_cross_attn.kv_linear.bias"] = (2 * dim,)
        keys[block + "audio_cross_attn.proj.weight"] = (dim, dim)
        keys[block + "audio_cross_attn.proj.bias"] = (dim,)
        if norm_input:
            keys[block + "norm_x.weight"] = keys[block + "norm_x.bias"] = (dim,)
    return keys


def official_audio_keys(config: Mapping[str, Any]) -> dict[str, Shape]:
    """The official audio key names and shapes for an `InfiniteTalkTransformer` config."""
    return _audio_key_shapes(
        num_layers=config["num_layers"], dim=config["num_attention_heads"] * config["attention_head_dim"],
        audio_window=config["audio_window"], audio_window_vf=config["audio_window_vf"],
        audio_layers=config["audio_layers"], audio_dim=config["audio_dim"], audio_inner_dim=config["audio_inner_dim"],
        audio_tokens=config["audio_tokens"], audio_token_dim=config["audio_token_dim"],
        norm_input=config.get("audio_norm_input", True), norm_output=config.get("audio_norm_output", True),
    )


def official_wan_base_keys(config: Mapping[str, Any]) -> dict[str, Shape]:
    """The original Wan2.1 I2V key names and shapes (Wan's `wan/modules/model.py` `WanModel`, i2v, qk_norm,
    cross_attn_norm) for an `InfiniteTalkTransformer` config: what the Wan2.1-I2V-14B-480P shards hold."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    ffn, image_dim = config["ffn_dim"], config["image_dim"]
    patch = tuple(config["patch_size"])
    keys: dict[str, Shape] = {
        "patch_embedding.weight": (dim, config["in_channels"], *patch),
        "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, config["text_dim"]), "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, config["freq_dim"]), "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
        "head.head.weight": (config["out_channels"] * patch[0] * patch[1] * patch[2], dim),
        "head.head.bias": (config["out_channels"] * patch[0] * patch[1] * patch[2],),
        "head.modulation": (1, 2, dim),
        # MLPProj: LayerNorm(1280), Linear(1280, 1280), GELU, Linear(1280, dim), LayerNorm(dim)
        "img_emb.proj.0.weight": (image_dim,), "img_emb.proj.0.bias": (image_dim,),
        "img_emb.proj.1.weight": (image_dim, image_dim), "img_emb.proj.1.bias": (image_dim,),
        "img_emb.proj.3.weight": (dim, image_dim), "img_emb.proj.3.bias": (dim,),
        "img_emb.proj.4.weight": (dim,), "img_emb.proj.4.bias": (dim,),
    }
    for i in range(config["num_layers"]):
        block = f"blocks.{i}."
        keys[block + "modulation"] = (1, 6, dim)
        for attn, projections in (("self_attn", ("q", "k", "v", "o")),
                                  ("cross_attn", ("q", "k", "v", "o", "k_img", "v_img"))):
            for name in projections:
                keys[f"{block}{attn}.{name}.weight"] = (dim, dim)
                keys[f"{block}{attn}.{name}.bias"] = (dim,)
            for norm in ("norm_q", "norm_k") + (("norm_k_img",) if attn == "cross_attn" else ()):
                keys[f"{block}{attn}.{norm}.weight"] = (dim,)
        keys[block + "norm3.weight"] = keys[block + "norm3.bias"] = (dim,)  # the cross-attention norm
        keys[block + "ffn.0.weight"], keys[block + "ffn.0.bias"] = (ffn, dim), (ffn,)
        keys[block + "ffn.2.weight"], keys[block + "ffn.2.bias"] = (dim, ffn), (dim,)
    return keys


# single/infinitetalk.safetensors (MeiGen-AI/InfiniteTalk) for the real 14B model: 10 + 40 × 8 = 330 tensors,
# 2,487,168,000 parameters.
PUBLISHED_AUDIO_KEYS: dict[str, Shape] = official_audio_keys(INFINITETALK_14B_CONFIG)


def is_audio_key(name: str) -> bool:
    """An InfiniteTalk (not Wan) key, by its official name."""
    return bool(_AUDIO_KEY.match(name))


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def official_to_model_names(names: Iterable[str]) -> dict[str, str]:
    """Official checkpoint name → this module's parameter name, for each of `names`.

    Wan names are renamed by diffusers' `convert_wan_transformer_to_diffusers` (fed the names themselves as
    values: for Wan2.1 keys it only renames); audio names keep their official spelling. Names another Wan
    variant would need more than a renaming for are rejected."""
    names = list(names)
    foreign = [n for n in names if _FOREIGN_KEY.search(_strip(n))]
    if foreign:
        raise VideostudioError("avatar_weights_incompatible", f"the checkpoint holds keys of another Wan model "
                                                              f"(not Wan2.1-I2V/InfiniteTalk): {_named(foreign)}")
    mapping: dict[str, str] = {}
    base: dict[str, str] = {}  # stripped official name → the name as given
    for name in names:
        plain = _strip(name)
        if is_audio_key(plain):
            mapping[name] = plain
        else:
            base[plain] = name
    # The converter pops from the dict it is given and renames every key; its values here are the names.
    converted = convert_wan_transformer_to_diffusers({plain: plain for plain in base})
    if len(converted) != len(base):  # two official names renamed onto one
        raise VideostudioError("avatar_weights_incompatible", "the Wan keys do not convert one to one")
    for new, plain in converted.items():
        mapping[base[plain]] = new
    return mapping


# diffusers name → official Wan name: the inverse of diffusers' renaming, for exports and error messages.
_TOP_INVERSE = (
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
    ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
    ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
    ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
    ("proj_out.", "head.head."),
)
_BLOCK_INVERSE = {
    "scale_shift_table": "modulation", "norm2": "norm3", "attn1": "self_attn", "attn2": "cross_attn",
    "to_q": "q", "to_k": "k", "to_v": "v", "add_k_proj": "k_img", "add_v_proj": "v_img",
    "norm_added_k": "norm_k_img",
}


def model_to_official_name(name: str) -> str:
    """This module's parameter name → the official checkpoint name it is loaded from."""
    if name == "scale_shift_table":
        return "head.modulation"
    for new, old in _TOP_INVERSE:
        if name.startswith(new):
            return old + name[len(new):]
    if not name.startswith("blocks.") or is_audio_key(name):
        return name
    parts = name.split(".")
    rest = ".".join(parts[2:])
    rest = rest.replace("to_out.0.", "o.").replace("ffn.net.0.proj.", "ffn.0.").replace("ffn.net.2.", "ffn.2.")
    rest = ".".join(_BLOCK_INVERSE.get(part, part) for part in rest.split("."))
    return f"blocks.{parts[1]}.{rest}"


def export_official_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A model state dict in the official layout: (Wan base tensors, InfiniteTalk audio tensors), e.g. to
    write a checkpoint the official pipeline (or `load_infinitetalk_state`) reads."""
    base: dict[str, torch.Tensor] = {}
    audio: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        official = model_to_official_name(name)
        (audio if is_audio_key(official) else base)[official] = tensor
    return base, audio


def _named(items: Sequence[str]) -> str:
    return named(items, _MAX_NAMED)


def _merge_names(base: Iterable[str], infinitetalk: Iterable[str]) -> dict[str, str]:
    """Official name (prefix stripped) → 'base' | 'infinitetalk': which source supplies it (the official
    merge: InfiniteTalk's file is updated over the base)."""
    origin = {_strip(n): "base" for n in base}
    origin.update({_strip(n): "infinitetalk" for n in infinitetalk})
    return origin


def check_state_shapes(model: torch.nn.Module, shapes: Mapping[str, Shape], *, what: str = "InfiniteTalk transformer",
                       origin: Mapping[str, str] | None = None) -> None:
    """Raise avatar_weights_incompatible unless `shapes` (model names) match `model`'s state exactly.

    `origin` (model name → official name) lets the message name the keys as the files spell them."""
    origin = origin or {}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def label(key: str) -> str:
        official = origin.get(key, model_to_official_name(key))
        return key if official == key else f"{official} (→ {key})"

    missing = [label(k) for k in expected if k not in shapes]
    unexpected = [label(k) for k in shapes if k not in expected]
    wrong = [f"{label(k)}: file {list(shapes[k])}, model {list(v)}" for k, v in expected.items()
             if k in shapes and tuple(shapes[k]) != v]
    raise_if_incompatible(what, missing=missing, unexpected=unexpected, wrong=wrong, subject="the checkpoints do",
                          limit=_MAX_NAMED)


def load_infinitetalk_state(base: Mapping[str, torch.Tensor], infinitetalk: Mapping[str, torch.Tensor]
                            ) -> dict[str, torch.Tensor]:
    """Official Wan base + InfiniteTalk tensors → one state dict in this module's names (the InfiniteTalk
    tensors win where both hold a key, as in the official merge). Validate it with `check_state_shapes`."""
    merged = {_strip(k): v for k, v in base.items()}
    merged.update({_strip(k): v for k, v in infinitetalk.items()})
    return {new: merged[old] for old, new in official_to_model_names(merged).items()}


def load_infinitetalk_into(model: InfiniteTalkTransformer, base: Mapping[str, torch.Tensor],
                           infinitetalk: Mapping[str, torch.Tensor]) -> InfiniteTalkTransformer:
    """Load in-memory official tensors into `model`, strictly (see module docstring)."""
    state = load_infinitetalk_state(base, infinitetalk)
    check_state_shapes(model, {k: tuple(v.shape) for k, v in state.items()})
    model.load_state_dict(state, strict=True)
    return model


# --- files ---------------------------------------------------------------------------------------

_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_BASE_HUB_PATTERNS = ["diffusion_pytorch_model*", "config.json"]
_CHUNK_BYTES = 1 << 30


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_source(spec: str | os.PathLike, *, repo_patterns: list[str] | None = None) -> Path:
    """A local file or directory, else a hub file `owner/repo:path` or (with `repo_patterns`) a hub repo
    `owner/repo` snapshot limited to those patterns."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.exists():
        return path
    repo_id, sep, filename = text.partition(":")
    if repo_id.count("/") != 1 or text.startswith((".", "/", "~")) or (sep and not filename) \
            or (not sep and repo_patterns is None):
        raise VideostudioError("model_unavailable", f"no weights at {text!r} (a hub file is written "
                                                    f"'owner/repo:path/in/repo.safetensors')")
    try:
        from huggingface_hub import hf_hub_download, snapshot_download

        if sep:
            return Path(hf_hub_download(repo_id, filename, local_files_only=_offline()))
        return Path(snapshot_download(repo_id, allow_patterns=repo_patterns, local_files_only=_offline()))
    except Exception as exc:  # offline and not cached, no such repo/file, network down
        where = " (HF_HUB_OFFLINE is set: only the local hub cache was searched)" if _offline() else ""
        raise VideostudioError("model_unavailable", f"cannot get {text!r} from the hub{where}: "
                                                    f"{type(exc).__name__}: {str(exc)[:200]}") from None


def weight_files(path: Path) -> list[Path]:
    """The tensor files of a checkpoint: the file itself, or a directory's indexed shards (else its
    `*.safetensors`)."""
    if path.is_file():
        return [path]
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise VideostudioError("avatar_weights_incompatible", f"{path} holds several shard indexes: "
                                                              f"{_named([p.name for p in indexes])}")
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise VideostudioError("avatar_weights_incompatible",
                                   f"{indexes[0]} is not a shard index: {type(exc).__name__}: {exc}") from None
        files = [path / name for name in dict.fromkeys(weight_map.values())]
        absent = [p.name for p in files if not p.is_file()]
        if absent:
            raise VideostudioError("avatar_weights_incompatible", f"{indexes[0].name} lists shards missing from "
                                                                  f"{path}: {_named(absent)}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise VideostudioError("avatar_weights_incompatible", f"no .safetensors files in {path}")
    return files


class _TensorFile:
    """Lazy access to one checkpoint file: names and shapes first, tensors one at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._torch: dict[str, torch.Tensor] | None = None
        try:
            if path.suffix in _TORCH_SUFFIXES:
                try:
                    loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # a legacy (non-zip) torch file cannot be memory-mapped
                    loaded = torch.load(path, map_location="cpu", weights_only=True)
                if isinstance(loaded, Mapping) and "state_dict" in loaded:
                    loaded = loaded["state_dict"]
                if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
                    raise ValueError("not a state dict of tensors")
                self._torch = dict(loaded)
                self.shapes = {k: tuple(v.shape) for k, v in self._torch.items()}
            else:
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as handle:
                    self.shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        except Exception as exc:  # unreadable, truncated, not a checkpoint
            raise VideostudioError("avatar_weights_incompatible", f"{path} is not a readable checkpoint: "
                                                                  f"{type(exc).__name__}: {str(exc)[:200]}") from None

    def tensors(self, names: Iterable[str]) -> Iterable[tuple[str, torch.Tensor]]:
        if self._torch is not None:
            for name in names:
                yield name, self._torch[name]
            return
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as handle:
            for name in names:
                yield name, handle.get_tensor(name)


def _keeps_fp32(model: torch.nn.Module, name: str) -> bool:
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    return any(module in name.split(".") for module in keep)


def _config_for(path: Path, config: Mapping[str, Any] | None) -> dict[str, Any]:
    if config is not None:
        return dict(config)
    candidate = path / "config.json" if path.is_dir() else None
    if candidate is not None and candidate.is_file():
        wan = json.loads(candidate.read_text())
        if wan.get("_class_name") == InfiniteTalkTransformer.__name__:  # this class's own saved config
            return {k: v for k, v in wan.items() if not k.startswith("_")}
        if wan.get("_class_name") == "WanModel" or "dim" in wan:
            try:
                return official_wan_config_to_diffusers(wan)
            except (KeyError, ValueError) as exc:
                raise VideostudioError("avatar_weights_incompatible",
                                       f"{candidate} is not a Wan2.1 I2V config: {exc}") from None
    return dict(INFINITETALK_14B_CONFIG)


def load_infinitetalk_transformer(base_path_or_dir: str | os.PathLike, infinitetalk_path: str | os.PathLike, *,
                                  dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                                  config: Mapping[str, Any] | None = None) -> InfiniteTalkTransformer:
    """The InfiniteTalk transformer (eval mode) with the official weights, loaded strictly.

    `base_path_or_dir`: the Wan2.1-I2V-14B-480P transformer (file, shard directory, or hub repo
    `Wan-AI/Wan2.1-I2V-14B-480P`); `infinitetalk_path`: `single/infinitetalk.safetensors` (local or
    `MeiGen-AI/InfiniteTalk:single/infinitetalk.safetensors`). `config` defaults to the directory's
    `config.json` (the official Wan one, or this class's own as `save_config` writes it), else
    `INFINITETALK_14B_CONFIG`. Names and shapes are checked from the file headers before
    any tensor is read; the model is built on the meta device and filled one tensor at a time, cast to
    `dtype` (diffusers' `_keep_in_fp32_modules` stay float32, as `from_pretrained` keeps them) on `device`.
    """
    from accelerate import init_empty_weights

    base_path = resolve_source(base_path_or_dir, repo_patterns=_BASE_HUB_PATTERNS)
    audio_path = resolve_source(infinitetalk_path)
    base_files = [_TensorFile(p) for p in weight_files(base_path)]
    audio_files = [_TensorFile(p) for p in weight_files(audio_path)]

    # Which file supplies each official name: later base shards, then the InfiniteTalk file, win.
    supplier: dict[str, tuple[_TensorFile, str]] = {}
    for handle in base_files + audio_files:
        for name in handle.shapes:
            supplier[_strip(name)] = (handle, name)
    mapping = official_to_model_names(supplier)  # official (stripped) → model name
    shapes = {new: supplier[old][0].shapes[supplier[old][1]] for old, new in mapping.items()}

    with init_empty_weights():  # parameters on meta; buffers (RoPE tables, not in any checkpoint) real
        model = InfiniteTalkTransformer(**_config_for(base_path, config))
    check_state_shapes(model, shapes, origin={new: old for old, new in mapping.items()})

    by_file: dict[int, list[tuple[str, str]]] = {}
    for old, new in mapping.items():
        handle, file_name = supplier[old]
        by_file.setdefault(id(handle), []).append((file_name, new))
    for handle in base_files + audio_files:
        wanted = dict(by_file.get(id(handle), []))
        chunk: dict[str, torch.Tensor] = {}
        held = 0
        for file_name, tensor in handle.tensors(wanted):
            new = wanted[file_name]
            target = torch.float32 if _keeps_fp32(model, new) else dtype
            chunk[new] = tensor.to(device=device, dtype=target if tensor.is_floating_point() else tensor.dtype)
            held += tensor.numel() * tensor.element_size()
            if held >= _CHUNK_BYTES:  # hand tensors to the model as they come: host memory stays ~one chunk
                model.load_state_dict(chunk, strict=False, assign=True)
                chunk, held = {}, 0
        model.load_state_dict(chunk, strict=False, assign=True)
    unfilled = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if unfilled:  # cannot happen after check_state_shapes; kept so a bug can never hand out meta weights
        raise VideostudioError("avatar_weights_incompatible", f"parameters left unfilled: {_named(unfilled)}")
    return model.to(device).eval()
