"""Joint-block replace patches (``patches_replace["dit"][("double_block", i)]``): each runs its block with the
block-scoped attention override, and in guidance passes also decides how the block takes part in autograd.

FLUX and Chroma blocks add into their inputs in place (``txt +=``, ``addcmul_``), so a plain backward fails and
``torch.utils.checkpoint`` around the stock block gives silently wrong gradients. In guidance passes they therefore
run as :func:`out_of_place_double_block`, the same computation written without in-place operations, under
non-reentrant checkpointing (only block inputs are kept; each block is recomputed once during backward). A block
whose attributes differ from the ones this copy knows runs as it is, without checkpointing, and the engine's
saved-tensor guard makes its backward correct. SD3's joint block has no in-place operations and the host already
checkpoints it on the replace path.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint

from ...capture.joint import JointLayout
from ..patches import entry_chunks
from ..recorder import ENTRIES_KEY, STORE_KEY, ForwardComplete
from .attention import OVERRIDE_KEY, BlockAttention

try:
    import comfy.ldm.chroma.layers as chroma_layers
    import comfy.ldm.flux.layers as flux_layers
    from comfy.ldm.flux.math import attention as flux_attention
except ImportError:  # 2024 host
    chroma_layers = flux_layers = flux_attention = None

STOCK, OUT_OF_PLACE, CHECKPOINTED = "stock", "out_of_place", "checkpointed"
_STREAM_PARTS = ("norm1", "attn", "norm2", "mlp")
_ATTENTION_PARTS = ("qkv", "norm", "proj")


def _has_stream(block: torch.nn.Module, stream: str) -> bool:
    attention = getattr(block, f"{stream}_attn", None)
    return (all(hasattr(block, f"{stream}_{part}") for part in _STREAM_PARTS)
            and all(hasattr(attention, part) for part in _ATTENTION_PARTS))


def supports_out_of_place(block: torch.nn.Module) -> bool:
    """Whether ``block`` is this host's FLUX or Chroma double block with every part the out-of-place copy uses."""
    if flux_layers is None or type(block) not in (flux_layers.DoubleStreamBlock, chroma_layers.DoubleStreamBlock):
        return False
    modulated_here = type(block) is flux_layers.DoubleStreamBlock  # Chroma's modulations come in with ``vec``
    return (hasattr(block, "num_heads") and _has_stream(block, "img") and _has_stream(block, "txt")
            and (not modulated_here or (hasattr(block, "img_mod") and hasattr(block, "txt_mod"))))


def _modulations(block: torch.nn.Module, vec: Any) -> tuple[Any, Any, Any, Any]:
    """``(img 1, img 2, txt 1, txt 2)`` modulations: FLUX computes them from ``vec``, Chroma passes them in."""
    if isinstance(vec, torch.Tensor):
        return (*block.img_mod(vec), *block.txt_mod(vec))
    (img_first, img_second), (txt_first, txt_second) = vec
    return img_first, img_second, txt_first, txt_second


def _stream_qkv(block: torch.nn.Module, stream: str, x: torch.Tensor, modulation: Any
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Modulated norm, qkv projection and q/k norm of one stream: ``[B, L, C] -> 3 x [B, H, L, D]``."""
    attention = getattr(block, f"{stream}_attn")
    modulated = torch.addcmul(modulation.shift, getattr(block, f"{stream}_norm1")(x), 1 + modulation.scale)
    qkv = attention.qkv(modulated)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attention.norm(q, k, v)
    return q, k, v


def _stream_update(block: torch.nn.Module, stream: str, x: torch.Tensor, attended: torch.Tensor, first: Any,
                   second: Any) -> torch.Tensor:
    """Residual attention and MLP updates of one stream, as new tensors."""
    x = x + getattr(block, f"{stream}_attn").proj(attended) * first.gate
    normed = torch.addcmul(second.shift, getattr(block, f"{stream}_norm2")(x), 1 + second.scale)
    return x + getattr(block, f"{stream}_mlp")(normed) * second.gate


def out_of_place_double_block(block: torch.nn.Module, img: torch.Tensor, txt: torch.Tensor, vec: Any,
                              pe: torch.Tensor | None, attn_mask: torch.Tensor | None, transformer_options: dict
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """A FLUX / Chroma double-stream block (``supports_out_of_place``) computed without in-place operations:
    ``(img [B, N, C], txt [B, T, C])``, equal to the stock block's outputs. Attention goes through the host's own
    FLUX attention (RoPE, then ``optimized_attention`` with the block's transformer options)."""
    img_first, img_second, txt_first, txt_second = _modulations(block, vec)
    img_q, img_k, img_v = _stream_qkv(block, "img", img, img_first)
    txt_q, txt_k, txt_v = _stream_qkv(block, "txt", txt, txt_first)
    image_first = getattr(block, "flipped_img_txt", False)
    order = ((img_q, txt_q), (img_k, txt_k), (img_v, txt_v)) if image_first else \
        ((txt_q, img_q), (txt_k, img_k), (txt_v, img_v))
    attended = flux_attention(*(torch.cat(pair, dim=2) for pair in order), pe=pe, mask=attn_mask,
                              transformer_options=transformer_options)
    if image_first:
        img_attended, txt_attended = attended[:, :img.shape[1]], attended[:, img.shape[1]:]
    else:
        txt_attended, img_attended = attended[:, :txt.shape[1]], attended[:, txt.shape[1]:]
    img = _stream_update(block, "img", img, img_attended, img_first, img_second)
    txt = _stream_update(block, "txt", txt, txt_attended, txt_first, txt_second)
    if txt.dtype == torch.float16:
        txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
    return img, txt


def out_of_place_block_runner(block: torch.nn.Module, checkpointed: bool) -> Callable[[dict], dict]:
    """An ``original_block`` that runs :func:`out_of_place_double_block`, under non-reentrant checkpointing when
    ``checkpointed``."""
    compute = functools.partial(out_of_place_double_block, block)

    def run(args: dict) -> dict:
        inputs = (args["img"], args["txt"], args["vec"], args["pe"], args.get("attn_mask"), args["transformer_options"])
        if checkpointed:
            img, txt = torch.utils.checkpoint.checkpoint(compute, *inputs, use_reentrant=False)
        else:
            img, txt = compute(*inputs)
        return {"img": img, "txt": txt}

    return run


@dataclass(frozen=True)
class BlockPlan:
    """What one joint block's patch does in a model call: ``record`` its attention at ``levels`` (with ``joint``
    probabilities at latent/4), ``stop`` the model after it once the store has every map, run as ``mode`` (``stock``:
    the host's block; ``out_of_place``: :func:`out_of_place_double_block`; ``checkpointed``: that under
    non-reentrant checkpointing; the latter two fall back to ``stock`` for blocks they do not know), force a
    ``differentiable`` attention backend (guidance passes)."""

    record: bool
    levels: tuple[int, ...] = ()
    joint: bool = False
    stop: bool = False
    mode: str = STOCK
    differentiable: bool = False


class JointBlockPatch:
    """``patches_replace["dit"][("double_block", index)]`` of the pack.

    ``block``: the model's block (for the out-of-place copy); ``text_offset``: tokens before the prompt's in the text
    stream; ``grid``: the image token grid of this run's latent. A patch another pack had installed in the slot
    (``wrapped``) still runs, and sees the pack's block as its ``original_block``. Patches are shared, never copied.
    """

    def __init__(self, block: torch.nn.Module, plan: BlockPlan, text_offset: int, grid: tuple[int, int],
                 wrapped: Callable | None = None) -> None:
        self.block = block
        self.plan = plan
        self.text_offset = text_offset
        self.grid = grid
        self.wrapped = wrapped

    def __deepcopy__(self, memo: dict) -> JointBlockPatch:
        return self  # holds the model's block: model options are deep-copied by the host, the block never is

    def _layout(self, text_tokens: int, image_tokens: int) -> JointLayout:
        """Text then image tokens (image first in a block with ``flipped_img_txt``); reference-image tokens (FLUX
        Kontext) follow the grid's."""
        prompt_tokens, length = text_tokens - self.text_offset, text_tokens + image_tokens
        if getattr(self.block, "flipped_img_txt", False):
            return JointLayout(image_tokens + self.text_offset, prompt_tokens, 0, self.grid, length)
        return JointLayout(self.text_offset, prompt_tokens, text_tokens, self.grid, length)

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args["transformer_options"]
        store = options.get(STORE_KEY) if self.plan.record else None
        layout = self._layout(args["txt"].shape[1], args["img"].shape[1])
        batch = args["img"].shape[0]
        call = {"cond_or_uncond": options.get("cond_or_uncond", [0]), "uuids": options.get("uuids")}
        rows = [row for _, chunk in entry_chunks(call, batch, options.get(ENTRIES_KEY)) for row in chunk]
        override = BlockAttention(layout, rows, store, self.plan.levels, self.plan.joint, self.plan.differentiable,
                                  options.get(OVERRIDE_KEY))
        block_args = {**args, "transformer_options": {**options, OVERRIDE_KEY: override}}
        original = extra["original_block"]
        if self.plan.mode != STOCK and supports_out_of_place(self.block):
            original = out_of_place_block_runner(self.block, self.plan.mode == CHECKPOINTED)
        out = self.wrapped(block_args, {**extra, "original_block": original}) if self.wrapped else original(block_args)
        if self.plan.stop and store is not None and store.recording and store.complete:
            raise ForwardComplete  # every map the loss needs is in: later blocks cannot change it
        return out
