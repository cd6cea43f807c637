"""The audit's numbers: how much of a tensor's variation is explained by the timestep.

Every function takes a captured tensor Y of shape (K, N, U): K timesteps, N inputs, U units
(channels × pixels flattened), and computes in float64 whatever dtype Y was captured in.

* ``time_share`` (η², the correlation ratio): per unit, Var_k(mean_n Y) / Var_{k,n}(Y), averaged over
  units that vary at all. 0 = the unit ignores t, 1 = it depends on t only.
* ``snr``: E_{n,u}[Var_k Y] / E_{k,u}[Var_n Y], time variance over sample variance, pooled over units.
* ``survival``: snr(norm output) / snr(norm input), how much of the time signal a layer lets through;
  the interior survival is the same ratio without the 1-pixel border where zero padding leaks t.

Variances are population variances (ddof = 0), so η² is exactly the between-timestep part of the
law of total variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Verdict thresholds on survival S, chosen from measurements (docs/audit.md, "Thresholds").
VANISHED_BELOW = 0.1
ALIVE_FROM = 0.5
VERDICTS = ("alive", "weak", "vanished", "no time")


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


def interior_mask(shape: tuple[int, ...]) -> torch.Tensor | None:
    """Units of a (C, H, W) map at least one pixel from the border; None for other shapes or maps under 3×3.

    Zero padding gives border pixels a partial kernel sum, so a per-channel offset leaks t there
    (the edge effect); the interior shows what the normalization itself did.
    """
    if len(shape) != 3 or shape[1] < 3 or shape[2] < 3:
        return None
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[:, 1:-1, 1:-1] = True
    return mask.reshape(-1)


def summarize(y: torch.Tensor, chunk_elements: int = 1 << 22) -> Summary:
    """SNR, interior SNR and η² of ``y`` (K, N, ...) in one float64 pass over chunks of units.

    All three are per-unit moments summed over units, so chunking the units is exact; it bounds
    the float64 copy to ``chunk_elements`` values whatever the layer size. The total variance per unit
    comes from the law of total variance: Var_{k,n} = Var_k(mean_n Y) + mean_k Var_n(Y).
    """
    if y.ndim < 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ValueError(f"captured tensor has shape {tuple(y.shape)}; allowed: (K, N, ...) with K, N >= 2")
    k, n = y.shape[:2]
    flat = y.reshape(k, n, -1)
    units = flat.shape[2]
    inner = interior_mask(tuple(y.shape[2:]))
    eps2 = torch.finfo(y.dtype).eps ** 2 if y.dtype.is_floating_point else 0.0
    step = max(1, chunk_elements // (k * n))
    sums = torch.zeros(5, dtype=torch.float64)  # Σ Var_k, Σ Var_n, the same two inside, Σ η²
    varying = 0
    for start in range(0, units, step):
        c = flat[:, :, start:start + step].to(torch.float64)
        within = c.var(dim=1, unbiased=False)                      # (K, u): Var_n at each timestep
        between = c.mean(dim=1).var(dim=0, unbiased=False)          # (u,): Var_k of the sample mean
        total = between + within.mean(dim=0)
        over_time, over_samples = c.var(dim=0, unbiased=False).sum(dim=0), within.sum(dim=0)  # (u,) each
        sums[0] += over_time.sum()
        sums[1] += over_samples.sum()
        if inner is not None:
            keep = inner[start:start + step]
            sums[2] += over_time[keep].sum()
            sums[3] += over_samples[keep].sum()
        # a unit varies when its variance is above the rounding level of the captured dtype
        varies = total > eps2 * c.square().mean(dim=(0, 1)) + torch.finfo(torch.float64).tiny
        sums[4] += (between[varies] / total[varies]).sum()
        varying += int(varies.sum())
    share = float(sums[4]) / varying if varying else math.nan
    inside = _ratio(float(sums[2]) / n, float(sums[3]) / k) if inner is not None else math.nan
    return Summary(snr=_ratio(float(sums[0]) / n, float(sums[1]) / k), time_share=share, interior_snr=inside)


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
