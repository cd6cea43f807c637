"""The audit's numbers: how much of a tensor's variation is explained by the timestep.

A captured tensor Y has shape (K, N, U): K timesteps, N inputs, U units (channels × pixels
flattened). The audit never stores it: ``Moments`` takes one timestep's N inputs at a time (one
shared-t forward call) and keeps running per-unit sums, from which it computes

* ``time_share`` (η², the correlation ratio): per unit, Var_k(mean_n Y) / Var_{k,n}(Y), averaged over
  units that vary at all. 0 = the unit ignores t, 1 = it depends on t only.
* ``snr``: E_{n,u}[Var_k Y] / E_{k,u}[Var_n Y], time variance over sample variance, pooled over units.
* ``survival``: snr(norm output) / snr(norm input), how much of the time signal a layer lets through;
  the interior survival is the same ratio without the 1-pixel border where zero padding leaks t.

Variances are population variances (ddof = 0), so η² is exactly the between-timestep part of the
law of total variance. Sums run in the captured dtype (float32 for float32, float16 and bfloat16
models, float64 for float64 ones), each variance from differences that cancel exactly when a unit
does not vary (docs/audit.md, "Precision").
"""

from __future__ import annotations

import functools
import importlib
import math
import types
from dataclasses import dataclass
from typing import Any

import torch

# Verdict thresholds on survival S, chosen from measurements (docs/audit.md, "Verdicts and their thresholds").
VANISHED_BELOW = 0.1
ALIVE_FROM = 0.5
# Calls of at most this many inputs are folded in by ``fused`` on the CPU (beyond it numba's loop is slower).
MAX_FUSED_ROWS = 4


def noise_floor(dtype: torch.dtype) -> float:
    """Smallest SNR that counts as a time signal: rounding noise of ``dtype`` (64 ulps, squared), in [1e-12, 1e-4].

    The cap is for half precision: 64 ulps squared is 0.004 in float16 and 0.25 in bfloat16, above the SNR of
    0.01-0.1 a real per-channel time offset has, while their rounding noise stays near eps² (1e-5).
    """
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return max(1e-12, min((64 * eps) ** 2, 1e-4))


@dataclass(frozen=True)
class Summary:
    """SNR and η² of one captured tensor; ``interior_snr`` leaves out a 1-pixel border (NaN if not a map)."""

    snr: float
    time_share: float
    interior_snr: float = math.nan


class Moments:
    """Running sums of one captured site, fed the N inputs of one timestep per ``add``, timesteps in any order.

    With Y the (N, U) values of one call and k the number of calls so far, each call adds, per unit:

    * the sample term  N·Var_n Y = Σ_n f² − (Σ_n f)² / N,  f = Y[n] − Y[0]  (0 exactly where the inputs agree);
    * the time term    (k − 1)/k · Σ_n δ²,  δ = Y − M,  then M += δ / k  (Welford's running mean M over the
      calls, N × U, from M = Y at the first call), so that the time terms add up to Σ_{k,n} (Y − mean_k Y)²;
    * for η² (``share``): S += N·Var_n Y and B += (k − 1)/k · (mean_n δ)², so that at the end S / (K·N) is
      E_k[Var_n Y] and B / K is Var_k(mean_n Y), per unit.

    The time and sample terms are summed over all units and over the 1-pixel border of a (C, H, W)
    map as soon as they are made (four numbers per call); ``summary`` adds the calls up in float64. So
    what outlives a call is M, plus S and B for an output. Two implementations of ``add``: ``_fold``, in
    torch on any device, sums in the compute dtype; on the CPU, with at most ``MAX_FUSED_ROWS`` inputs,
    ``fused.Sums`` makes one pass with float64 sums (tests compare the two).
    """

    def __init__(self, dtype: torch.dtype, share: bool = True,
                 scratch: dict[tuple[Any, ...], torch.Tensor] | None = None) -> None:
        self.dtype = dtype  # the captured dtype: sets the rounding level of "varies" and the noise floor
        self.compute = (dtype if dtype in (torch.float32, torch.float64) else
                        torch.float32 if dtype.is_floating_point else torch.float64)
        self.share = share  # keep what η² needs (False for layer inputs)
        self.scratch = {} if scratch is None else scratch  # work buffers, shared by all sites of an audit
        self.k = 0
        self.shape: tuple[int, ...] = ()
        self.sums: list[torch.Tensor] = []  # per call: the time and sample terms over all units[, over the border]

    def add(self, y: torch.Tensor) -> None:
        """One timestep: ``y`` holds the N inputs, shape (N, ...), the same (N, ...) at every call."""
        if self.k == 0:  # units in memory order (a view, not a copy, for channels-last maps too)
            self.order = [0, *sorted(range(1, y.ndim), key=lambda i: -y.stride()[i])]
        d = y.detach().permute(self.order).reshape(y.shape[0], -1).to(self.compute)
        if self.k == 0:
            self._start(d, tuple(y.shape[1:]))
        self.k += 1
        if self.fused is None:
            self._fold(d)
            return
        sums = self.fused.fold(d, self.k)  # the same four numbers, in one pass
        self.sums.append(sums if self.edges is not None else sums[:2])

    def _fold(self, d: torch.Tensor) -> None:
        """The update in torch, on any device: the formulas above as a dozen elementwise operations."""
        n, k = self.n, self.k
        work = self._buffer("work", d)
        time, sample, spare = rows = self._buffer("rows", d, (3, d.shape[1]))

        f = torch.sub(d[1:], d[0], out=work[1:])
        s = self._sum_rows(f, spare)                                               # Σ_n f
        torch.addcmul(self._sum_rows(f, time, squares=True), s, s, value=-1.0 / n, out=sample)  # N·Var_n Y
        if self.share and k == 1:
            self.total_sample.copy_(sample)
        elif self.share:
            self.total_sample.add_(sample)

        if k == 1:  # Welford's running mean over the calls starts at Y: no time term yet
            self.mean.copy_(d)
            time.zero_()
            if self.share:
                self.between.zero_()
        else:
            delta = torch.sub(d, self.mean, out=work)
            self.mean.add_(delta, alpha=1.0 / k)
            if self.share:
                mean_delta = self._sum_rows(delta, spare)  # N · mean_n δ
                self.between.addcmul_(mean_delta, mean_delta, value=(k - 1) / (k * n * n))
            self._sum_rows(delta, time, squares=True)  # Σ_n δ², weighted by (k − 1)/k in summary
        pair = rows[:2]
        self.sums.append(pair.sum(1))
        if self.edges is not None:
            border = self._border(self.edges, d.device)
            edge = torch.index_select(pair, 1, border, out=self._buffer("edge", d, (2, border.numel())))
            self.sums.append(edge.sum(1))

    def _start(self, d: torch.Tensor, shape: tuple[int, ...]) -> None:
        """Allocate M (and S, B); the first call fills them, so nothing is zeroed here."""
        self.n, self.shape = d.shape[0], shape
        self.edges = border_mask(shape, tuple(self.order)) if len(shape) == 3 and min(shape[1:]) >= 3 else None
        if self.share:
            self.total_sample = d.new_empty(d.shape[1])  # S, per unit
            self.between = d.new_empty(d.shape[1])       # B, per unit
        self.mean = torch.empty_like(d, memory_format=torch.contiguous_format)  # M, per input and unit
        fused = _fused() if d.device.type == "cpu" and self.n <= MAX_FUSED_ROWS else None
        self.fused = None if fused is None else fused.Sums(self.mean, self.edges, *(
            (self.total_sample, self.between) if self.share else (None, None)))
        if self.fused is None:
            self.ones = d.new_ones(self.n)

    def _sum_rows(self, x: torch.Tensor, out: torch.Tensor, squares: bool = False) -> torch.Tensor:
        """Σ over the rows of x (of x² with ``squares``, which may overwrite x), per unit: x[0] itself for one row."""
        if x.shape[0] == 1:
            return torch.mul(x[0], x[0], out=out) if squares else x[0]
        return torch.mv((x.square_() if squares else x).T, self.ones[:x.shape[0]], out=out)

    def _border(self, edges: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Positions of the border units (``edges``' ones) on ``device``, for the torch update; cached per layout."""
        key = ("border", self.shape, tuple(self.order), device)
        if key not in self.scratch:
            self.scratch[key] = edges.nonzero().squeeze(1).to(device)
        return self.scratch[key]

    def _buffer(self, tag: str, like: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """A work buffer from the shared scratch pool (the sites are folded in one after another)."""
        shape = tuple(like.shape) if shape is None else shape
        key = (tag, shape, like.dtype, like.device)
        buf = self.scratch.get(key)
        if buf is None:
            buf = self.scratch[key] = like.new_empty(shape)
        return buf

    def summary(self) -> Summary:
        """SNR, interior SNR (a (C, H, W) map of at least 3×3) and η² (NaN unless ``share``)."""
        k = self.k
        if k < 2:
            raise ValueError(f"{k} timestep(s) were added; the statistics need K >= 2")
        # Σ_{k,n,u} (Y − mean_k Y)² and Σ_{k,n,u} (Y − mean_n Y)², over all units [and over the border]
        weights = torch.tensor([[(j - 1) / j, 1.0] for j in range(1, k + 1)], dtype=torch.float64)
        sums = torch.stack(self.sums).double().view(k, -1, 2).mul_(weights.to(self.mean.device)[:, None])
        (time, sample), *border = sums.sum(0).tolist()  # one sync
        # E_{n,u}[Var_k Y] / E_{k,u}[Var_n Y] = (time / KNU) / (sample / KNU)
        whole = _ratio(max(0.0, time), max(0.0, sample))
        inside = math.nan
        if border:
            (time_border, sample_border), = border
            inside = _ratio(max(0.0, time - time_border), max(0.0, sample - sample_border))
        eta2 = math.nan
        if self.share:
            # a unit varies when its variance is above the rounding level of its values in the captured dtype:
            # Var > eps²·(Var + mean²) + tiny
            eps2 = torch.finfo(self.dtype).eps ** 2 if self.dtype.is_floating_point else 0.0
            tiny = torch.finfo(self.compute).tiny
            fn = self._time_share if self.fused is None else self.fused.time_share
            shares, count = fn(k, eps2, tiny)
            if count:
                eta2 = shares / count
        return Summary(snr=whole, time_share=eta2, interior_snr=inside)

    def _time_share(self, k: int, eps2: float, tiny: float) -> tuple[float, int]:
        """Σ over the units that vary of Var_k(mean_n Y) / Var_{k,n} Y = N·B / (S + N·B), and their number.

        Per unit, in the compute dtype, each term scaled by K·N (which the ratio cancels).
        """
        n = self.n
        total = torch.add(self.total_sample, self.between, alpha=n)  # K·N·Var_{k,n} Y = S + N·B
        level = torch.mv(self.mean.T, self.ones)                      # N·mean_{k,n} Y
        # varies: K·N·Var > eps²·K·N·(Var + mean²) + K·N·tiny (a 0/1 mask; written with out= as the bool one is slow)
        threshold = torch.addcmul(total, level, level, value=k / n).mul_(eps2).add_(tiny * k * n)
        varies = torch.gt(total, threshold, out=threshold)
        share = torch.div(self.between, total.clamp_min_(tiny), out=level).mul_(varies)
        return n * float(share.sum(dtype=torch.float64)), int(varies.sum())


@functools.lru_cache(maxsize=256)
def border_mask(shape: tuple[int, ...], order: tuple[int, ...]) -> torch.Tensor:
    """1 on the 1-pixel border of a (C, H, W) map, 0 inside, per unit in memory order ``order`` (uint8, CPU).

    Cached for the process: every audit of a model meets the same few layouts.
    """
    mask = torch.zeros(shape, dtype=torch.uint8)
    mask[:, [0, -1]] = 1
    mask[:, :, [0, -1]] = 1
    return mask.permute([i - 1 for i in order[1:]]).reshape(-1).contiguous()


@functools.cache
def _fused() -> types.ModuleType | None:
    """``awareness.fused`` when numba can be imported, else None (``Moments`` then folds in with torch)."""
    try:
        return importlib.import_module(".fused", __package__)
    except ImportError:
        return None


def summarize(y: torch.Tensor, share: bool = True) -> Summary:
    """SNR, interior SNR and η² of a whole captured tensor ``y`` (K, N, ...), one timestep at a time."""
    if y.ndim < 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ValueError(f"captured tensor has shape {tuple(y.shape)}; allowed: (K, N, ...) with K, N >= 2")
    moments = Moments(y.dtype, share)
    for step in y:
        moments.add(step)
    return moments.summary()



def _ratio(over_time: float, over_samples: float) -> float:
    """Time over sample variance; inf when only time varies, NaN when nothing does."""
    if over_samples == 0:
        return math.inf if over_time > 0 else math.nan
    return over_time / over_samples


def time_share(y: torch.Tensor) -> float:
    """η²: per unit, the fraction of the variance over (k, n) explained by the timestep, averaged over units.

    Units that do not vary (above rounding) are left out; NaN when no unit varies.
    """
    return summarize(y).time_share


def snr(y: torch.Tensor) -> float:
    """E_{n,u}[Var_k Y] / E_{k,u}[Var_n Y]; inf when only time varies, NaN when nothing varies."""
    return summarize(y).snr


def survival(snr_in: float, snr_out: float, dtype: torch.dtype = torch.float64) -> float:
    """S = SNR_out / SNR_in; NaN when the input carries no time signal above the noise floor of ``dtype``."""
    if not math.isfinite(snr_in) or not snr_in > noise_floor(dtype) or math.isnan(snr_out):
        return math.nan
    return snr_out / snr_in


def verdict(s: float, interior: float = math.nan) -> str:
    """vanished (S < 0.1), weak (0.1 <= S < 0.5), alive (S >= 0.5), or no time (S is NaN).

    S is the interior survival when there is one (a map of at least 3×3): what a zero-padding border
    leaks is reported in ``survival`` but is not the normalization keeping t (docs/audit.md).
    """
    value = s if math.isnan(interior) else interior
    if math.isnan(value):
        return "no time"
    if value < VANISHED_BELOW:
        return "vanished"
    return "weak" if value < ALIVE_FROM else "alive"
