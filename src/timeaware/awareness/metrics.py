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

import math
from dataclasses import dataclass
from typing import Any

import torch

# Verdict thresholds on survival S, chosen from measurements (docs/audit.md, "Verdicts and their thresholds").
VANISHED_BELOW = 0.1
ALIVE_FROM = 0.5


def noise_floor(dtype: torch.dtype) -> float:
    """Smallest SNR that counts as a time signal: rounding noise of ``dtype`` (64 ulps, squared), at least 1e-12."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return max(1e-12, (64 * eps) ** 2)


@dataclass(frozen=True)
class Summary:
    """SNR and η² of one captured tensor; ``interior_snr`` leaves out a 1-pixel border (NaN if not a map)."""

    snr: float
    time_share: float
    interior_snr: float = math.nan


class Moments:
    """Running sums of one captured site, fed the N inputs of one timestep per ``add``, timesteps in any order.

    Each variance is computed from values of its own size, so it is exactly 0 when nothing varies:

    * over inputs, per timestep: f = Y[k, n] - Y[k, 0], N·Var_n Y = Σ_n f² - (Σ_n f)² / N per unit;
    * over timesteps, per input and unit: Welford's update of the running mean M over k,
      δ = Y[k, n] - M, M += δ / k, Σ_k (Y - mean_k Y)² += (k - 1) / k · δ², and the same for the
      mean over n (its δ is the mean over n of δ), which η² needs.

    Per-unit terms are pooled as soon as nothing else needs them (sums over the units and over the
    1-pixel border of a map, in the compute dtype, accumulated in float64 in ``summary``): the time
    term of every call, and the sample term of a layer input; an output keeps its sample term per
    unit, which η² needs. So the state that outlives a call is M (N × U) plus, for outputs, two
    per-unit sums: fresh memory costs page faults, which on a VM cost more than pooling each call.
    Work buffers come from a scratch pool shared by all sites of an audit.
    """

    def __init__(self, dtype: torch.dtype, share: bool = True,
                 scratch: dict[tuple[Any, ...], torch.Tensor] | None = None) -> None:
        self.dtype = dtype  # the captured dtype: sets the rounding level of "varies" and the noise floor
        self.compute = (dtype if dtype in (torch.float32, torch.float64) else
                        torch.float32 if dtype.is_floating_point else torch.float64)
        self.share = share  # keep what η² needs (False for layer inputs)
        self.scratch = {} if scratch is None else scratch
        self.k = 0
        self.shape: tuple[int, ...] = ()

    def add(self, y: torch.Tensor) -> None:
        """One timestep: ``y`` holds the N inputs, shape (N, ...), the same (N, ...) at every call."""
        if self.k == 0:  # units in memory order (a view, not a copy, for channels-last maps too)
            strides = y.stride()
            self.order = [0, *sorted(range(1, y.ndim), key=lambda i: -strides[i])]
        d = y.detach().permute(self.order).reshape(y.shape[0], -1)
        if d.dtype != self.compute:
            d = d.to(self.compute)
        n, units = d.shape
        if self.k == 0:
            self._start(d, tuple(y.shape[1:]))
        tmp = self._buffer((n, units), d)
        row = self._buffer((units,), d, "row")  # one per-unit term, pooled right away
        f = torch.sub(d[1:], d[0], out=tmp[1:])
        if n == 2 and self.share:  # Σ_n f = f: N·Var_n = f² / 2, kept as f²
            self.unit[0].addcmul_(f[0], f[0])
        else:
            s = self.ones[1:] @ f if n > 2 else None
            self._square_sum(f, row)
            if s is not None:
                row.addcmul_(s, s, value=-1.0 / n).clamp_min_(0)
            if self.share:
                self.unit[0].add_(row)
            else:
                self._pool(row, self.pooled[1])
        if self.k:
            k = self.k + 1
            delta = torch.sub(d, self.mean, out=tmp)
            self.mean.add_(delta, alpha=1.0 / k)
            if self.share:
                dh = torch.add(delta[0], delta[1]) if n == 2 else self.ones @ delta
                self.unit[1].addcmul_(dh, dh, value=(k - 1) / (k * n * n))
            self._square_sum(delta, row)
            self._pool(row, self.pooled[0], (k - 1) / k)
        self.k += 1

    def _start(self, d: torch.Tensor, shape: tuple[int, ...]) -> None:
        self.n, self.shape = d.shape[0], shape
        self.ones = d.new_ones(self.n)
        self.mean = d.clone()  # per input and unit: the running mean over k
        self.border = self._border(d.device) if len(shape) == 3 and min(shape[1:]) >= 3 else None
        # pooled over calls, in float64 on the device: Σ_k (k-1)/k Σ_n δ² and Σ_k N·Var_n, over all units and the border
        self.pooled = torch.zeros(2, 2, dtype=torch.float64, device=d.device)
        # 1/N for N·Var_n, 1/4 for N = 2 where f² = 2N·Var_n is kept
        self.sample_scale = 0.25 if self.n == 2 else 1.0 / self.n
        if self.share:  # per unit: Σ_k N·Var_n (or f²), Σ_k (Y - mean_k Y)² of the mean over n
            self.unit = d.new_zeros(2, d.shape[1])

    def _border(self, device: torch.device) -> torch.Tensor:
        """Positions, in memory order, of the 1-pixel border of the (C, H, W) map; cached per layout."""
        key = ("border", self.shape, tuple(self.order), device)
        if key not in self.scratch:
            mask = torch.zeros(self.shape, dtype=torch.bool, device=device)
            mask[:, [0, -1]] = True
            mask[:, :, [0, -1]] = True
            self.scratch[key] = mask.permute([i - 1 for i in self.order[1:]]).reshape(-1).nonzero().squeeze(1)
        return self.scratch[key]

    def _square_sum(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """out = Σ over the rows of x², per unit; may overwrite x.

        Row loops of ``addcmul_`` for long rows, else one matrix-vector product over the squares (measured:
        ``Tensor.sum(0)`` over a short leading axis is several times slower than either).
        """
        if x.shape[1] >= 32768 or x.shape[0] < 3:
            torch.mul(x[0], x[0], out=out)
            for row in x[1:]:
                out.addcmul_(row, row)
        else:
            torch.mv(x.square_().T, self.ones[:x.shape[0]], out=out)

    def _pool(self, row: torch.Tensor, into: torch.Tensor, weight: float = 1.0) -> None:
        """into += weight · (the row's sum over all units, over the border); on the device, no sync."""
        into[0].add_(row.sum(), alpha=weight)
        if self.border is not None:
            into[1].add_(row.index_select(0, self.border).sum(), alpha=weight)

    def _buffer(self, shape: tuple[int, ...], like: torch.Tensor, tag: str = "") -> torch.Tensor:
        """A work buffer from the shared scratch pool (the sites are folded in one after another)."""
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
        n = self.n
        pooled = self.pooled.clone()
        if self.share:  # an output's sample term stayed per unit
            self._pool(self.unit[0], pooled[1])
        (time, time_border), (sample, sample_border) = pooled.tolist()  # one sync
        scale = self.sample_scale
        whole = _snr(time / k, sample * scale, k, n)  # Σ_{n,u} Var_k Y, Σ_{k,u} Var_n Y
        inside = math.nan
        if self.border is not None:
            inside = _snr((time - time_border) / k, (sample - sample_border) * scale, k, n)
        eta2 = math.nan
        if self.share:
            between = self.unit[1] / k                                           # Var_k of the mean over n
            total = self.unit[0].mul(self.sample_scale / k).add_(between)    # Var_{k,n}: law of total variance
            level = self.ones.div(n) @ self.mean
            eps2 = torch.finfo(self.dtype).eps ** 2 if self.dtype.is_floating_point else 0.0
            tiny = torch.finfo(self.compute).tiny
            # a unit varies when its variance is above the rounding level of its values in the captured dtype,
            # total > eps2·(total + level²) + tiny; sign(relu(·)) is that 0/1 mask without the (slow)
            # comparison and where kernels
            varies = torch.addcmul(total, level, level, value=-eps2 / (1 - eps2))
            varies.sub_(tiny / (1 - eps2)).relu_().sign_()
            count = float(varies.sum())
            if count:
                eta2 = float(torch.dot(between.div_(total.clamp_min_(tiny)), varies)) / count
        return Summary(snr=whole, time_share=eta2, interior_snr=inside)


def summarize(y: torch.Tensor, share: bool = True) -> Summary:
    """SNR, interior SNR and η² of a whole captured tensor ``y`` (K, N, ...), one timestep at a time."""
    if y.ndim < 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ValueError(f"captured tensor has shape {tuple(y.shape)}; allowed: (K, N, ...) with K, N >= 2")
    moments = Moments(y.dtype, share)
    for step in y:
        moments.add(step)
    return moments.summary()



def _snr(over_time: float, over_samples: float, k: int, n: int) -> float:
    """E_{n,u}[Var_k Y] / E_{k,u}[Var_n Y] from Σ_{n,u} Var_k Y and Σ_{k,u} Var_n Y; rounding can leave -1e-17 for 0."""
    return _ratio(max(0.0, over_time) / n, max(0.0, over_samples) / k)


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
