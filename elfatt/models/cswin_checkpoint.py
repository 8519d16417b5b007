"""Official CSWin checkpoints (microsoft/CSWin-Transformer) onto CSWin-ELFATT, tensor for tensor.

The global linear heads take the place, channels and LePE of CSWin's vertical-stripe head group and the blockified
heads keep its horizontal stripes (see :mod:`elfatt.models.cswin_elfatt`), so every official tensor has one home.
"""

import re
import warnings
from typing import Any

import torch.nn as nn
from torch import Tensor

__all__ = ["checkpoint_filter_fn"]


# Official CSWin names (microsoft/CSWin-Transformer, models/cswin.py) -> ours, for everything but the LePE convs.
_CSWIN_RENAMES = [
    (re.compile(r"^stage1_conv_embed\.0\.(weight|bias)$"), r"patch_embed.proj.\1"),
    (re.compile(r"^stage1_conv_embed\.2\.(weight|bias)$"), r"patch_embed.norm.\1"),
    (re.compile(r"^merge(\d+)\.(conv|norm)\.(weight|bias)$"), r"stages.\1.downsample.\2.\3"),
    (re.compile(r"^stage(\d+)\.(\d+)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)$"), None),
    (re.compile(r"^stage(\d+)\.(\d+)\.(qkv|proj)\.(weight|bias)$"), None),
    (re.compile(r"^(norm|head)\.(weight|bias)$"), r"\1.\2"),
]
_CSWIN_LEPE = re.compile(r"^stage(\d+)\.(\d+)\.attns\.(\d)\.get_v\.(weight|bias)$")
_ADAPTED_BY_TIMM = ("head.", "patch_embed.proj.")
_CSWIN_ONLY = re.compile(r"^(stage\d+[._]|merge\d+\.)")


def _rename_cswin(key: str) -> str | None:
    for pattern, target in _CSWIN_RENAMES:
        match = pattern.match(key)
        if match is None:
            continue
        if target is not None:
            return match.expand(target)
        stage, block, name, kind = match.groups()
        attn = "attn." if name in ("qkv", "proj") else ""
        return f"stages.{int(stage) - 1}.blocks.{block}.{attn}{name}.{kind}"
    return None


def _unwrap(state_dict: dict[str, Any], use_ema: bool) -> dict[str, Tensor]:
    keys = ("state_dict_ema", "model_ema") if use_ema else ("model", "state_dict")
    for key in keys:
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    else:
        if use_ema:
            raise ValueError(f"use_ema=True but the checkpoint has none of {keys}: {sorted(state_dict)[:8]}")
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def checkpoint_filter_fn(
    state_dict: dict[str, Any],
    model: nn.Module,
    *,
    strict: bool = True,
    use_ema: bool = False,
    for_timm_loader: bool = False,
) -> dict[str, Tensor]:
    """Map a checkpoint in the official CSWin code's names onto a :class:`~elfatt.models.cswin_elfatt.CSWinELFATT`.

    Names follow microsoft/CSWin-Transformer: ``stage1_conv_embed.{0,2}`` (stem conv, norm), ``stage{s}.{j}``
    blocks with ``norm1``, ``qkv``, ``attns.{0,1}.get_v`` (LePE of the vertical, horizontal stripe group),
    ``proj``, ``norm2``, ``mlp.fc{1,2}``, ``merge{s}.{conv,norm}``, then ``norm`` and ``head``. ``attns.0`` maps to
    the global heads' LePE and ``attns.1`` to the block heads' (see the module docstring); a stage with a single
    group (CSWin's last stage, ``attns.0`` over all channels) has its conv cut in two along the channels.
    A checkpoint wrapped in ``model`` / ``state_dict`` (or, with ``use_ema``, ``state_dict_ema``) is unwrapped,
    a DDP ``module.`` prefix dropped, and a state dict already in this model's names returned as it is.

    Args:
        state_dict: the loaded checkpoint.
        model: the model it is for.
        strict: raise on checkpoint keys that map nowhere, model keys the checkpoint lacks, and shape
            mismatches; when False, warn, drop the mismatched tensors and return what maps.
        use_ema: take the EMA weights of a training checkpoint.
        for_timm_loader: leave a classifier or stem of another shape (``head``, ``patch_embed.proj``) for timm's
            ``load_pretrained`` to drop or adapt to ``num_classes`` / ``in_chans``, as ``pretrained=True`` does.

    Returns:
        A state dict for ``model.load_state_dict``.

    Raises:
        ValueError: with ``strict``, listing unexpected keys, missing keys and shape mismatches.
    """
    state_dict = _unwrap(state_dict, use_ema)
    target = model.state_dict()
    if not any(_CSWIN_ONLY.match(k) for k in state_dict):
        # Already in this model's names (``norm`` and ``head`` are named alike in both).
        return state_dict
    out: dict[str, Tensor] = {}
    unexpected = []
    for key, value in state_dict.items():
        lepe = _CSWIN_LEPE.match(key)
        if lepe is None:
            new_key = _rename_cswin(key)
            if new_key is None:
                unexpected.append(key)
            else:
                out[new_key] = value
            continue
        stage, block, group, kind = lepe.groups()
        prefix = f"stages.{int(stage) - 1}.blocks.{block}.attn."
        global_key, block_key = f"{prefix}global_lepe.conv.{kind}", f"{prefix}block_lepe.conv.{kind}"
        if group == "1":
            out[block_key] = value
        elif (
            global_key in target
            and block_key in target
            and value.shape[0] == (target[global_key].shape[0] + target[block_key].shape[0])
        ):
            # CSWin's single-group stage: one LePE conv over all channels, global heads' channels first.
            out[global_key], out[block_key] = value.split([target[global_key].shape[0], target[block_key].shape[0]])
        elif group == "0":
            out[global_key] = value
        else:
            unexpected.append(key)
    unexpected += [k for k in out if k not in target]
    missing = [k for k in target if k not in out]
    # With timm's loader, a classifier for other classes or a stem for other channels is its to drop or adapt.
    adapted = _ADAPTED_BY_TIMM if for_timm_loader else ()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in out.items()
        if k in target and v.shape != target[k].shape and not k.startswith(adapted)
    ]
    problems = []
    for what, keys in (("unexpected (mapped nowhere)", unexpected), ("missing", missing), ("mismatched", mismatched)):
        if keys:
            shown = ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
            problems.append(f"{len(keys)} {what}: {shown}")
    if problems:
        message = "CSWin checkpoint does not fit the model: " + "; ".join(problems)
        if strict:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    return {k: v for k, v in out.items() if k in target and (v.shape == target[k].shape or k.startswith(adapted))}
