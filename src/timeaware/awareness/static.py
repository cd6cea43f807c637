"""Find, without running data, where a per-channel time offset is followed by a normalization that cancels it.

A *site* is a time injector that adds one scalar per channel (torchdiffeq's ``ConcatConv2d`` /
ANODE's ``Conv2dTime``, a ``TimeConv2d`` with an offset, diffusers' ``ResnetBlock2D`` with
``time_embedding_norm="default"``) paired with the normalization that follows it.

"Follows" is read from module registration order (``named_modules()``): the first normalization
registered after the injector. That is how most blocks are written (conv, then its norm; timeaware's
own modules are registered in the order they run), but not all, so diffusers' ``ResnetBlock2D`` is
paired by its attributes (``time_emb_proj`` → ``norm2``). A model whose order differs is read right by
the run-time tracer (``trace.trace_time``), which the audit and ``fix`` use; this check needs no data.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..embeddings import LinearTimeMap, MLPTimeMap
from ..layers import ConcatConv2d, TimeConv2d
from .norms import channels_per_unit, is_norm

INJECTOR_NAMES = ("ConcatConv2d", "Conv2dTime")  # torchdiffeq's and ANODE's copies, matched by class name


@dataclass(frozen=True)
class Site:
    """One per-channel time offset and the normalization after it.

    kind               "exact": one channel per unit, the offset cancels; "partial": C/G > 1 channels per group,
                       only the differences between the offsets within a group survive; "unknown": other norms
    channels_per_unit  channels one normalization unit holds (None when unknown)
    protected          a positional timestep embedding (one H×W map for all channels) is added at this site
    """

    injector: str
    norm: str
    norm_type: str
    kind: str
    channels_per_unit: int | None
    protected: bool
    note: str = ""

    def __str__(self) -> str:
        unit = "?" if self.channels_per_unit is None else str(self.channels_per_unit)
        guard = "protected by a positional map" if self.protected else "unprotected"
        note = f"; {self.note}" if self.note else ""
        return f"{self.injector} -> {self.norm} ({self.norm_type}): {self.kind}, {unit} ch/unit, {guard}{note}"


def find_vanishing_sites(model: nn.Module) -> list[Site]:
    """Every per-channel time offset in ``model`` paired with the normalization that follows it.

    Injectors with no normalization after them are not sites (nothing can cancel their offset).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model is a {type(model).__name__}; allowed: a torch.nn.Module")
    named = list(model.named_modules())
    sites: list[Site] = []
    inside_known: list[str] = []
    for i, (name, module) in enumerate(named):
        if any(_within(name, block) for block in inside_known):
            continue
        pairs = _known_pairs(name, module)
        if pairs is not None:
            inside_known.append(name)
            sites += [_site(model, inj, norm, protected) for inj, norm, protected in pairs]
        elif _is_injector(module):
            after = [(n, m) for n, m in named[i + 1:] if not _within(n, name)]
            j = next((j for j, (_, m) in enumerate(after) if is_norm(m)), None)
            if j is not None:  # protected: the block's own map, or a positional map registered before the norm
                protected = getattr(module, "time_map", None) is not None or any(
                    isinstance(m, (LinearTimeMap, MLPTimeMap)) for _, m in after[:j])
                sites.append(_site(model, name, after[j][0], protected))
    return sites


def _known_pairs(name: str, module: nn.Module) -> list[tuple[str, str, bool]] | None:
    """(injector, norm, protected) for blocks whose structure we know; None for any other module."""
    prefix = f"{name}." if name else ""
    if type(module).__name__ == "ResnetBlock2D":  # diffusers: temb is added after conv1, before norm2
        if getattr(module, "time_emb_proj", None) is None or module.time_embedding_norm != "default":
            return []
        return [(f"{prefix}time_emb_proj", f"{prefix}norm2", False)]
    return None


def _is_injector(module: nn.Module) -> bool:
    if isinstance(module, TimeConv2d):
        return module.offset_kind != "none"
    return isinstance(module, ConcatConv2d) or type(module).__name__ in INJECTOR_NAMES


def _within(name: str, block: str) -> bool:
    return block == "" or name == block or name.startswith(f"{block}.")


def _site(model: nn.Module, injector: str, norm_name: str, protected: bool) -> Site:
    norm = model.get_submodule(norm_name)
    units = channels_per_unit(norm)
    kind = "unknown" if units is None else "exact" if units == 1 else "partial"
    notes = []
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        notes.append("BatchNorm cancels it in train mode with one t per batch; eval mode keeps it")
    elif kind == "partial":
        notes.append(f"only offset differences within each group of {units} channels survive")
    if _zero_padded(model.get_submodule(injector)):
        notes.append("zero padding leaks t at the border")
    return Site(injector=injector, norm=norm_name, norm_type=type(norm).__name__, kind=kind,
                channels_per_unit=units, protected=protected, note="; ".join(notes))


def _zero_padded(module: nn.Module) -> bool:
    """ConcatConv with zero padding: border pixels see part of the t-kernel (the edge effect)."""
    if _is_injector(module) and not isinstance(module, TimeConv2d):
        conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
        return conv is not None and conv.padding_mode == "zeros" and conv.padding not in ((0, 0), "valid")
    return False
