"""LoRA files: the diffusers/peft layout and the kohya (sd-scripts, ComfyUI, Forge) layout of a FLUX LoRA.

Training holds the LoRA as peft factors per diffusers module: ``A`` (rank × in) and ``B`` (out × rank), applied as
``W + (alpha / rank) · B A``.

- diffusers file: ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight`` with ``alpha / rank`` folded into ``B``
  (readers of this layout, diffusers and ComfyUI alike, assume alpha = rank when none is stored).
- kohya file: ``lora_unet_<bfl module>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` on the original BFL
  module names. BFL fuses q, k, v (and, in single blocks, the MLP input) into one linear layer, so those LoRAs are
  fused: down = the members' ``A`` stacked, up = their ``B`` block-diagonal, rank n · rank and alpha n · alpha (the
  same scale). diffusers' ``_convert_kohya_flux_lora_to_diffusers`` recognises the block-diagonal up and splits it
  back exactly.

Both files carry the run's metadata (trigger word, base model, steps, rank, ...) in the safetensors header.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# (kohya name inside a block, the diffusers modules it fuses, in order)
DOUBLE_BLOCK_MODULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("img_attn_qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("img_attn_proj", ("attn.to_out.0",)),
    ("txt_attn_qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("txt_attn_proj", ("attn.to_add_out",)),
    ("img_mlp_0", ("ff.net.0.proj",)),
    ("img_mlp_2", ("ff.net.2",)),
    ("txt_mlp_0", ("ff_context.net.0.proj",)),
    ("txt_mlp_2", ("ff_context.net.2",)),
    ("img_mod_lin", ("norm1.linear",)),
    ("txt_mod_lin", ("norm1_context.linear",)),
)
SINGLE_BLOCK_MODULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
    ("linear2", ("proj_out",)),
    ("modulation_lin", ("norm.linear",)),
)
# The transformer's own layers outside the blocks (diffusers name, kohya name). BFL orders the final modulation
# (shift, scale), diffusers (scale, shift): that LoRA's up weight has its two halves swapped (diffusers' reader too).
TOP_LEVEL_MODULES: tuple[tuple[str, str], ...] = (
    ("x_embedder", "img_in"),
    ("context_embedder", "txt_in"),
    ("time_text_embed.timestep_embedder.linear_1", "time_in_in_layer"),
    ("time_text_embed.timestep_embedder.linear_2", "time_in_out_layer"),
    ("time_text_embed.text_embedder.linear_1", "vector_in_in_layer"),
    ("time_text_embed.text_embedder.linear_2", "vector_in_out_layer"),
    ("time_text_embed.guidance_embedder.linear_1", "guidance_in_in_layer"),
    ("time_text_embed.guidance_embedder.linear_2", "guidance_in_out_layer"),
    ("proj_out", "final_layer_linear"),
    ("norm_out.linear", "final_layer_adaLN_modulation_1"),
)
_SWAPPED_HALVES = frozenset({"norm_out.linear"})
_DIFFUSERS_KEY = re.compile(r"^(?:transformer\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class KohyaLayout:
    """A family's kohya names: per block kind its (kohya name, fused diffusers members), and the top-level layers.

    FLUX.1's is below; FLUX.2's lives with its family (pipeline/models/families/flux2.py).
    """

    double: tuple[tuple[str, tuple[str, ...]], ...]
    single: tuple[tuple[str, tuple[str, ...]], ...]
    top: tuple[tuple[str, str], ...]
    swapped_halves: frozenset[str] = frozenset()

    @property
    def block_kinds(self) -> dict[str, tuple[str, tuple[tuple[str, tuple[str, ...]], ...]]]:
        return {"transformer_blocks": ("double_blocks", self.double),
                "single_transformer_blocks": ("single_blocks", self.single)}

    @property
    def top_to_kohya(self) -> dict[str, str]:
        return dict(self.top)

    @property
    def top_from_kohya(self) -> dict[str, str]:
        return {kohya: diffusers for diffusers, kohya in self.top}

    def top_key(self) -> re.Pattern[str]:
        names = "|".join(map(re.escape, self.top_from_kohya))
        return re.compile(rf"^lora_unet_({names})\.(lora_(?:down|up)\.weight|alpha)$")


FLUX1_KOHYA = KohyaLayout(DOUBLE_BLOCK_MODULES, SINGLE_BLOCK_MODULES, TOP_LEVEL_MODULES, _SWAPPED_HALVES)
_KOHYA_KEY = re.compile(r"^lora_unet_(double_blocks|single_blocks)_(\d+)_(\w+)\.(lora_(?:down|up)\.weight|alpha)$")


class LoraFormatError(ValueError):
    """A LoRA state dict or file is not in the layout expected; the message names the key."""


@dataclass(frozen=True)
class LoraFactors:
    """One module's LoRA: ``delta W = scale · B @ A``."""

    a: torch.Tensor  # rank × in
    b: torch.Tensor  # out × rank
    scale: float = 1.0


def factors_from_peft(state: Mapping[str, torch.Tensor], *, rank: int, alpha: float) -> dict[str, LoraFactors]:
    """Group a peft state dict (``<module>.lora_A.weight`` ...) into factors per diffusers module name."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _DIFFUSERS_KEY.match(key)
        if not match:
            raise LoraFormatError(f"key {key!r} is not a LoRA A/B weight of the form <module>.lora_A.weight")
        parts.setdefault(match.group(1), {})[match.group(2)] = value
    factors = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise LoraFormatError(f"module {module!r} has lora_{'A' if 'A' not in ab else 'B'} missing")
        factors[module] = LoraFactors(a=ab["A"], b=ab["B"], scale=alpha / rank)
    return factors


def to_diffusers(factors: Mapping[str, LoraFactors]) -> dict[str, torch.Tensor]:
    """The diffusers layout, scale folded into ``B`` so that alpha = rank on loading."""
    out = {}
    for module, f in factors.items():
        out[f"transformer.{module}.lora_A.weight"] = f.a.detach().float().contiguous()
        out[f"transformer.{module}.lora_B.weight"] = (f.b.detach().float() * f.scale).contiguous()
    return out


def from_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, LoraFactors]:
    """Factors from a diffusers-layout state dict (scale already folded in)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _DIFFUSERS_KEY.match(key)
        if match:
            parts.setdefault(match.group(1), {})[match.group(2)] = value
    return {m: LoraFactors(a=ab["A"], b=ab["B"]) for m, ab in parts.items() if set(ab) == {"A", "B"}}


def to_kohya(factors: Mapping[str, LoraFactors], layout: KohyaLayout = FLUX1_KOHYA) -> dict[str, torch.Tensor]:
    """The kohya/ComfyUI layout (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`` ...) of ``layout``'s
    family (FLUX.1 unless given)."""
    top_to_kohya, block_kinds = layout.top_to_kohya, layout.block_kinds
    blocks: dict[tuple[str, int], dict[str, LoraFactors]] = {}
    out: dict[str, torch.Tensor] = {}
    for module, f in factors.items():
        if module in top_to_kohya:
            # alpha / rank folded into up and no alpha stored (readers take alpha = rank): diffusers' reader ignores
            # the final layer's alpha, and older ones refuse a final-layer alpha key
            prefix = f"lora_unet_{top_to_kohya[module]}"
            up = f.b.detach().float() * f.scale
            out[f"{prefix}.lora_down.weight"] = f.a.detach().float().contiguous()
            out[f"{prefix}.lora_up.weight"] = _swap_halves(up) if module in layout.swapped_halves else up.contiguous()
            continue
        kind, _, rest = module.partition(".")
        index, _, inner = rest.partition(".")
        if kind not in block_kinds or not index.isdigit():
            raise LoraFormatError(f"module {module!r} has no kohya name: only FLUX transformer block layers, the "
                                  f"embedders and the final layer do")
        blocks.setdefault((kind, int(index)), {})[inner] = f
    for (kind, index), inner in sorted(blocks.items()):
        kohya_kind, table = block_kinds[kind]
        used = set()
        for kohya_name, members in table:
            present = [m for m in members if m in inner]
            if not present:
                continue
            used.update(present)
            prefix = f"lora_unet_{kohya_kind}_{index}_{kohya_name}"
            down, up, alpha = _fuse([inner.get(m) for m in members], members, prefix)
            out[f"{prefix}.lora_down.weight"] = down
            out[f"{prefix}.lora_up.weight"] = up
            out[f"{prefix}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
        unknown = set(inner) - used
        if unknown:
            raise LoraFormatError(f"{kind}.{index}: modules {sorted(unknown)} have no kohya name")
    return out


def _fuse(parts: list[LoraFactors | None], members: tuple[str, ...], prefix: str) -> tuple[torch.Tensor, torch.Tensor,
                                                                                                float]:
    present = [p for p in parts if p is not None]
    rank = present[0].a.shape[0]
    scale = present[0].scale
    if any(p.a.shape[0] != rank or abs(p.scale - scale) > 1e-12 for p in present):
        raise LoraFormatError(f"{prefix}: the fused modules {members} must share rank and alpha")
    if len(parts) == 1:
        f = present[0]
        return f.a.detach().float().contiguous(), f.b.detach().float().contiguous(), scale * rank
    if len(present) != len(parts):
        missing = [m for m, p in zip(members, parts, strict=True) if p is None]
        raise LoraFormatError(f"{prefix}: fused modules {list(members)} need all of them; missing {missing}")
    down = torch.cat([p.a.detach().float() for p in present], dim=0)
    out_dims = [p.b.shape[0] for p in present]
    up = torch.zeros(sum(out_dims), rank * len(present))
    row = 0
    for i, p in enumerate(present):
        up[row:row + out_dims[i], i * rank:(i + 1) * rank] = p.b.detach().float()
        row += out_dims[i]
    # kohya scales by alpha / (fused rank): n · alpha keeps the members' alpha / rank.
    return down.contiguous(), up, scale * rank * len(present)


def from_kohya(state: Mapping[str, torch.Tensor], layout: KohyaLayout = FLUX1_KOHYA) -> dict[str, LoraFactors]:
    """Factors per diffusers module from a kohya FLUX LoRA of ``layout``'s family (the inverse of ``to_kohya`` for any
    model width).

    A fused layer whose up weight is block-diagonal is split into per-member ranks; otherwise each member gets the
    whole down weight and its rows of the up weight (exact either way).
    """
    top_from_kohya, top_to_kohya, top_key = layout.top_from_kohya, layout.top_to_kohya, layout.top_key()
    kohya_kinds = {kohya: (diffusers, table) for diffusers, (kohya, table) in layout.block_kinds.items()}
    groups: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    top: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if match := top_key.match(key):
            top.setdefault(top_from_kohya[match.group(1)], {})[match.group(2)] = value
            continue
        match = _KOHYA_KEY.match(key)
        if not match:
            raise LoraFormatError(f"key {key!r} is not a kohya FLUX transformer key (lora_unet_double_blocks_N_..., "
                                  f"lora_unet_single_blocks_N_..., lora_unet_ + one of {', '.join(top_from_kohya)})")
        groups.setdefault(match.group(1, 2, 3), {})[match.group(4)] = value
    out: dict[str, LoraFactors] = {}
    for module, tensors in top.items():
        if not {"lora_down.weight", "lora_up.weight"} <= tensors.keys():
            raise LoraFormatError(f"lora_unet_{top_to_kohya[module]}: needs both lora_down and lora_up weights")
        down, up = tensors["lora_down.weight"].float(), tensors["lora_up.weight"].float()
        alpha = float(tensors["alpha"]) if "alpha" in tensors else float(down.shape[0])
        out[module] = LoraFactors(a=down, b=_swap_halves(up) if module in layout.swapped_halves else up,
                                  scale=alpha / down.shape[0])
    for (kohya_kind, index, name), tensors in groups.items():
        prefix = f"lora_unet_{kohya_kind}_{index}_{name}"
        diffusers_kind, table = kohya_kinds[kohya_kind]
        members = dict(table).get(name)
        if members is None:
            raise LoraFormatError(f"{prefix}: unknown kohya module {name!r} in {kohya_kind}")
        down, up = tensors["lora_down.weight"].float(), tensors["lora_up.weight"].float()
        rank = down.shape[0]
        alpha = float(tensors["alpha"]) if "alpha" in tensors else float(rank)
        scale = alpha / rank
        names = [f"{diffusers_kind}.{index}.{m}" for m in members]
        if len(members) == 1:
            out[names[0]] = LoraFactors(a=down, b=up, scale=scale)
            continue
        dims = _fused_out_dims(name, up.shape[0], len(members))
        n = len(members)
        pieces = torch.split(up, dims, dim=0)
        if rank % n == 0 and _block_diagonal(pieces, rank // n):
            r = rank // n
            for i, module in enumerate(names):
                out[module] = LoraFactors(a=down[i * r:(i + 1) * r], b=pieces[i][:, i * r:(i + 1) * r].contiguous(),
                                          scale=scale)
        else:
            for module, piece in zip(names, pieces, strict=True):
                out[module] = LoraFactors(a=down, b=piece.contiguous(), scale=scale)
    return out


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """The rows' two halves exchanged: (scale, shift) <-> (shift, scale)."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0).contiguous()


def _fused_out_dims(name: str, total: int, n: int) -> list[int]:
    if name == "linear1":  # q, k, v of width h and the MLP input of width 4h (FLUX's mlp_ratio)
        h = total // 7
        return [h, h, h, total - 3 * h]
    return [total // n] * n


def _block_diagonal(pieces: tuple[torch.Tensor, ...], r: int) -> bool:
    for i, piece in enumerate(pieces):
        off = torch.cat([piece[:, :i * r], piece[:, (i + 1) * r:]], dim=1)
        if off.numel() and bool(off.abs().max() > 0):
            return False
    return True


def delta_weights(factors: Mapping[str, LoraFactors]) -> dict[str, torch.Tensor]:
    """``scale · B @ A`` per module: what the LoRA adds to each weight (to compare layouts exactly)."""
    return {m: f.scale * (f.b.float() @ f.a.float()) for m, f in factors.items()}


def save_lora_file(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Write safetensors with header metadata atomically (a temporary file, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per writer: two exports re-stamping one file at once must not write into each other's copy.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    header = {"format": "pt", **{str(k): str(v) for k, v in metadata.items()}}
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=header)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_metadata(path: Path) -> dict[str, str]:
    """The safetensors header metadata of a LoRA file."""
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def update_metadata(path: Path, updates: Mapping[str, str]) -> bool:
    """Set header keys of a LoRA file in place (atomically), tensors unchanged; False when it already had them.

    For files written before a key was right (e.g. a micro LoRA whose header said ``flux1``): the download must name
    the base the LoRA fits even for models trained by an older version.
    """
    metadata = read_metadata(path)
    if all(metadata.get(k) == str(v) for k, v in updates.items()):
        return False
    save_lora_file(path, load_file(str(path)), {**metadata, **updates})
    return True


def load_kohya_as_diffusers(path: Path, layout: KohyaLayout = FLUX1_KOHYA) -> dict[str, torch.Tensor]:
    """A kohya file as a diffusers-layout state dict, for ``pipe.load_lora_weights(state)`` on any FLUX width.

    (diffusers reads kohya FLUX files itself, but assumes FLUX.1's full width for the fused single-block layer.)
    """
    return to_diffusers(from_kohya(load_file(str(path)), layout))


def convert_to_kohya(diffusers_path: Path, kohya_path: Path, layout: KohyaLayout = FLUX1_KOHYA) -> Path:
    """Write the kohya/ComfyUI file for a diffusers-layout LoRA file (e.g. the checkpoint the assessment chose),
    keeping its header metadata."""
    factors = from_diffusers(load_file(str(diffusers_path)))
    if not factors:
        raise LoraFormatError(f"diffusers_path: {str(diffusers_path)!r} holds no lora_A/lora_B pairs")
    return save_lora_file(kohya_path, to_kohya(factors, layout), read_metadata(diffusers_path))
