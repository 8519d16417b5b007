"""Joint text+image attention (SD3's MMDiT, FLUX's double- and single-stream blocks) computed with ELFATT over the
image tokens, training-free."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from elfatt.diffusion.processor import PatchState
from elfatt.ops import elfatt, global_head_count
from elfatt.ops.blocks import ceil_div, resolve_block

__all__ = ["JointELFATTProcessor", "FluxELFATTProcessor"]


class JointELFATTProcessor:
    """SD3's ``JointAttnProcessor2_0`` (MMDiT joint attention) with ELFATT for the image queries, no new weights.

    q, k, v come from the layer's own projections and q/k norms, image and text alike. The first ``split`` of the
    heads (rounded down) are global linear heads: the image queries attend every token, the text tokens as ELFATT's
    prefix tokens. In the other heads each image query attends, with exact softmax and the layer's scale, the image
    keys of its ``block`` of the token grid and every text key. The text queries attend every key exactly, in every
    head (``O(P N)``, linear in the image tokens). With no global heads and one block over the grid this is the
    original attention. Tokens are not merged here (the patch's ``ratio`` applies to self-attention layers).

    Calls it does not cover (an attention mask, a token count that is not the running call's grid) go to the
    original processor.
    """

    def __init__(self, state: PatchState, original: object) -> None:
        self.state = state
        self.original = original

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> Tensor | tuple[Tensor, Tensor]:
        grid = self.state.latent_size
        if grid is None or grid[0] * grid[1] != hidden_states.shape[1] or attention_mask is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        q, k, v = _joined_qkv(attn, hidden_states, encoder_hidden_states)
        prefix = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        text_out, image_out = self._joint_attention(attn.scale, q, k, v, prefix, grid)
        image_out = attn.to_out[1](attn.to_out[0](image_out.flatten(2)))
        if encoder_hidden_states is None:
            return image_out
        text_out = text_out.flatten(2)
        if not attn.context_pre_only:
            text_out = attn.to_add_out(text_out)
        return image_out, text_out

    def _joint_attention(
        self, scale: float, q: Tensor, k: Tensor, v: Tensor, prefix: int, grid: tuple[int, int]
    ) -> tuple[Tensor | None, Tensor]:
        """The outputs ``[B, P, heads, d]`` of the text queries (None without text) and ``[B, N, heads, d]`` of the
        image queries of a text-then-image sequence ``q, k, v`` ``[B, P + N, heads, d]``."""
        config = self.state.config
        heads = q.shape[2]
        num_global = global_head_count(heads, config.split, round_down=True)
        parts = []
        if num_global:
            # the text tokens are ELFATT's prefix tokens
            out = elfatt(
                q[:, :, :num_global], k[:, :, :num_global], v[:, :, :num_global], grid, num_global_heads=num_global,
                num_prefix_tokens=prefix,
            )  # fmt: skip
            parts.append(out[:, prefix:])
        if num_global < heads:
            q_b, k_b, v_b = (x[:, :, num_global:] for x in (q, k, v))
            text_kv = (k_b[:, :prefix], v_b[:, :prefix]) if prefix else None
            block = resolve_block(grid, config.block)
            parts.append(
                _blocks_with_text(q_b[:, prefix:], k_b[:, prefix:], v_b[:, prefix:], text_kv, grid, block, scale)
            )
        image_out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        text_q, keys, values = (x.transpose(1, 2) for x in (q[:, :prefix], k, v))
        text_out = F.scaled_dot_product_attention(text_q, keys, values, scale=scale).transpose(1, 2) if prefix else None
        return text_out, image_out


class FluxELFATTProcessor(JointELFATTProcessor):
    """FLUX's ``FluxAttnProcessor`` with ELFATT for the image queries: as :class:`JointELFATTProcessor`, after FLUX's
    q/k norms and rotary embedding of the text-then-image sequence. The double-stream blocks get the text as
    ``encoder_hidden_states``; the single-stream blocks get one sequence whose first tokens are the text (their
    count from the running call). Fused projections and attention masks go to the original processor."""

    def __call__(  # type: ignore[override]
        self,
        attn: torch.nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        image_rotary_emb: object = None,
        **kwargs: object,
    ) -> Tensor | tuple[Tensor, Tensor]:
        from diffusers.models.embeddings import apply_rotary_emb

        grid, single = self.state.latent_size, encoder_hidden_states is None
        prefix = self.state.text_tokens if single else encoder_hidden_states.shape[1]
        if (
            grid is None
            or prefix is None
            or grid[0] * grid[1] != hidden_states.shape[1] - (prefix if single else 0)
            or attention_mask is not None
            or getattr(attn, "fused_projections", False)
        ):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **kwargs)
        q, k, v = _joined_qkv(attn, hidden_states, encoder_hidden_states)
        if image_rotary_emb is not None:
            q, k = (apply_rotary_emb(x, image_rotary_emb, sequence_dim=1) for x in (q, k))
        text_out, image_out = self._joint_attention(attn.head_dim**-0.5, q, k, v, prefix, grid)
        if single:
            return torch.cat([text_out, image_out], dim=1).flatten(2).to(q.dtype)
        image_out = attn.to_out[1](attn.to_out[0](image_out.flatten(2)))
        return image_out, attn.to_add_out(text_out.flatten(2))


def _joined_qkv(
    attn: torch.nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v ``[B, P + N, heads, d]`` of the text (``encoder_hidden_states``, through the layer's ``add_*``
    projections and ``norm_added_*``; none where it is None) followed by the image tokens."""
    q, k, v = _projected(attn, hidden_states, (attn.to_q, attn.to_k, attn.to_v), (attn.norm_q, attn.norm_k))
    if encoder_hidden_states is None:
        return q, k, v
    projections = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
    text = _projected(attn, encoder_hidden_states, projections, (attn.norm_added_q, attn.norm_added_k))
    return tuple(torch.cat(pair, dim=1) for pair in zip(text, (q, k, v), strict=True))


def _projected(attn: torch.nn.Module, x: Tensor, projections: tuple, norms: tuple) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v ``[B, T, heads, d]`` of ``x`` through the layer's projections, q and k through its norms (which
    normalise the last dim, as diffusers applies them to ``[B, heads, T, d]``)."""
    q, k, v = (projection(x).unflatten(-1, (attn.heads, -1)) for projection in projections)
    q, k = (x if norm is None else norm(x) for x, norm in zip((q, k), norms, strict=True))
    return q, k, v


def _blocks_with_text(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    text_kv: tuple[Tensor, Tensor] | None,
    grid: tuple[int, int],
    block: tuple[int, int],
    scale: float,
) -> Tensor:
    """Exact attention of each image query to the image keys of its block and to every text key; ``[B, N, h, d]``.

    The grid is padded to whole blocks and the padded keys masked (only where a side does not divide); the text
    keys are appended to every block's keys, so one SDPA call attends them all."""
    (height, width), (bh, bw) = grid, block
    rows, cols = ceil_div(height, bh), ceil_div(width, bw)
    batch, _, heads, _ = q.shape

    def blockify(x: Tensor) -> Tensor:
        x = x.view(batch, height, width, heads, -1)
        x = F.pad(x, (0, 0, 0, 0, 0, cols * bw - width, 0, rows * bh - height))
        x = x.view(batch, rows, bh, cols, bw, heads, -1).permute(0, 5, 1, 3, 2, 4, 6)
        return x.reshape(batch, heads, rows * cols, bh * bw, -1)

    qb, kb, vb = blockify(q), blockify(k), blockify(v)
    mask = None
    if rows * bh != height or cols * bw != width:
        inside = torch.zeros(rows * bh, cols * bw, dtype=torch.bool, device=q.device)
        inside[:height, :width] = True
        mask = inside.view(rows, bh, cols, bw).permute(0, 2, 1, 3).reshape(rows * cols, 1, bh * bw)
    if text_kv is not None:
        prefix = text_kv[0].shape[1]
        kb, vb = (
            torch.cat([xb, t.transpose(1, 2).unsqueeze(2).expand(-1, -1, rows * cols, -1, -1)], dim=3)
            for xb, t in zip((kb, vb), text_kv, strict=True)
        )
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(rows * cols, 1, prefix)], dim=2)
    # Heads and blocks in one batch dimension: SDPA's fused CPU kernel takes 4-d inputs only (5-d ran its math path).
    qb, kb, vb = (x.flatten(1, 2) for x in (qb, kb, vb))
    mask = None if mask is None else mask.repeat(heads, 1, 1)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale)
    out = out.view(batch, heads, rows, cols, bh, bw, -1).permute(0, 2, 4, 3, 5, 1, 6)
    out = out.reshape(batch, rows * bh, cols * bw, heads, -1)[:, :height, :width]
    return out.reshape(batch, height * width, heads, -1)
