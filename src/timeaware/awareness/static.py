"""Find, without running data, where a per-channel time offset is followed by a normalization that cancels it.

A *site* is a time injector that adds one scalar per channel, paired with the normalization that follows
it. Injectors are recognised by their structure, not their class names:

* a conv that takes t first (``forward(t, x)``) and holds no weights but its kernel: torchdiffeq's
  ``ConcatConv2d``, ANODE's ``Conv2dTime`` (it concatenates a t channel), and timeaware's own blocks;
  also a weightless module that reads its ``.t`` (torchdyn's ``DepthCat``, a t channel for the next conv);
* in a block whose forward takes a time embedding (``forward(x, emb)``: ADM's ``ResBlock``, diffusers'
  ``ResnetBlock2D``), a Linear with as many outputs as the next normalization has channels: its output
  is added per channel (a Linear reached from the block through containers only, not one inside its
  attention layers). One with twice as many is a scale-shift applied after the norm (ADM's
  ``use_scale_shift_norm``, lucidrains' blocks), which survives it, so it is no site.

"Follows" is read from module registration order (``named_modules()``): the first normalization
registered after the injector (inside the block, for an embedding projection). That is how most
blocks are written (conv, then its norm), but not all; a model whose order differs is read right by the
run-time tracer (``trace.trace_time``), which the audit and ``fix`` use; this check needs no data.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..calling import holds_time
from ..embeddings import LinearTimeMap, MLPTimeMap
from ..layers import TimeConv2d
from ..specs.describe import EMBEDDING_NAMES, TIME_NAMES, forward_parameters
from .norms import channels_per_unit, groups_of, is_norm


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
    blocks = [name for name, module in named if _takes_embedding(name, module)]
    sites: list[Site] = []
    for i, (name, module) in enumerate(named):
        scope: str | None
        if _is_injector(module):
            scope = ""
        elif isinstance(module, nn.Linear):
            scope = max((b for b in blocks if _within(name, b) and b != name), key=len, default=None)
            if scope is None or not _on_embedding_path(model, scope, name):
                continue
        else:
            continue
        after = [(n, m) for n, m in named[i + 1:] if _within(n, scope) and not _within(n, name)]
        j = next((j for j, (_, m) in enumerate(after) if is_norm(m)), None)
        if j is None or (isinstance(module, nn.Linear) and module.out_features != _channels(after[j][1])):
            continue  # no norm after it, or a scale-shift (2 × C outputs) or another Linear of the block
        protected = getattr(module, "time_map", None) is not None or any(
            isinstance(m, (LinearTimeMap, MLPTimeMap)) for _, m in after[:j])
        sites.append(_site(model, name, after[j][0], protected))
    return sites


def _takes_embedding(name: str, module: nn.Module) -> bool:
    """A block whose forward takes a time embedding after x: ``forward(x, emb)``, ``forward(x, temb)``, or, below
    the model itself, ``forward(x, t)`` (diffusers' ``ResidualTemporalBlock1D`` names its embedding t)."""
    names = EMBEDDING_NAMES + (TIME_NAMES if name else ())
    return any(p.name in names for p in forward_parameters(module)[1:])


def _on_embedding_path(model: nn.Module, block: str, name: str) -> bool:
    """Whether only containers (``Sequential``, ``ModuleList``) lie between ``block`` and its submodule ``name``:
    ADM's ``emb_layers[1]``, diffusers' ``time_emb_proj``; not a Linear inside an attention layer of the block."""
    parts = name.split(".")
    depth = len(block.split(".")) if block else 0
    parents = [".".join(parts[:i]) for i in range(depth + 1, len(parts))]
    return all(isinstance(model.get_submodule(p), (nn.Sequential, nn.ModuleList, nn.ModuleDict)) for p in parents)


def _is_injector(module: nn.Module) -> bool:
    """What adds t per channel to the next conv's output: timeaware's own conv, a conv taking ``(t, x)`` with no
    weights but its kernel, or a weightless module that reads its ``.t`` (torchdyn's ``DepthCat``)."""
    if isinstance(module, TimeConv2d):
        return module.offset_kind != "none"
    if holds_time(module) and next(module.parameters(), None) is None:
        return True
    params = forward_parameters(module)
    if len(params) < 2 or params[0].name not in TIME_NAMES:
        return False
    convs = [m for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return len(convs) == 1 and all(p is convs[0].weight or p is convs[0].bias for p in module.parameters())


def _channels(norm: nn.Module) -> int | None:
    grouped = groups_of(norm)
    channels = grouped[1] if grouped is not None else getattr(norm, "num_features", None)
    return channels if isinstance(channels, int) else None


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
    """A conv concatenating t with zero padding: border pixels see part of the t-kernel (the edge effect)."""
    if _is_injector(module) and not isinstance(module, TimeConv2d):
        conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
        return conv is not None and conv.padding_mode == "zeros" and conv.padding not in ((0, 0), "valid")
    return False
