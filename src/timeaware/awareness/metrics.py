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


def summarize(y: torch.Tensor, share: bool = True, chunk_elements: int = 1 << 18) -> Summary:
    """SNR, interior SNR and η² of ``y`` (K, N, ...) in float64, a cache-sized chunk of units at a time.

    Speed matters (the audit's budget is 10% of the model's forward passes), so the SNRs use pooled
    sums instead of per-unit variances:

        Σ_{n,u} Var_k Y = Σ d² / K - Σ_{n,u} (mean_k d)²,   Σ_{k,u} Var_n Y = Σ d² / N - Σ_{k,u} (mean_n d)²

    with d = Y - Y[0, 0] (a per-unit shift that keeps the differences free of cancellation; for
    float32 data it is taken in float32, exact to the data's own rounding) written straight into a
    reused float64 buffer, one small matrix product for the means over n (per k) and over k (per n),
    and dot products for the sums of squares. For a (C, H, W) map of at least 3×3, chunks hold whole
    channels, and the interior SNR subtracts the same sums over the 1-pixel border, where zero padding
    leaks t (the edge effect). η² needs per-unit variances; ``share=False`` skips it (NaN), as the
    audit does for layer inputs.
    """
    if y.ndim < 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ValueError(f"captured tensor has shape {tuple(y.shape)}; allowed: (K, N, ...) with K, N >= 2")
    k, n = y.shape[:2]
    flat = y.reshape(k, n, -1)
    units = flat.shape[2]
    plane = tuple(y.shape[3:]) if y.ndim == 5 and min(y.shape[3:]) >= 3 else None
    size = plane[0] * plane[1] if plane else 1
    step = min(units, max(1, chunk_elements // (k * n * size)) * size)
    eps2 = torch.finfo(y.dtype).eps ** 2 if y.dtype.is_floating_point else 0.0
    # rows 0..K-1 average over n at each k, rows K..K+N-1 average over k for each n
    rows = torch.arange(k * n)
    means = torch.cat([(rows[None] // n == torch.arange(k)[:, None]).to(torch.float64) / n,
                       (rows[None] % n == torch.arange(n)[:, None]).to(torch.float64) / k])
    d_buf = torch.empty(k * n * step, dtype=torch.float64)
    sq_buf = torch.empty_like(d_buf) if share else d_buf
    acc = torch.zeros(6, dtype=torch.float64)  # Σd², Σ(mean_n d)², Σ(mean_k d)², then the same on the border
    share_sum, varying = 0.0, 0
    for start in range(0, units, step):
        width = min(step, units - start)
        first = flat[0, 0, start:start + width]
        torch.sub(flat[:, :, start:start + width], first, out=d_buf[:k * n * width].view(k, n, width))
        d = d_buf[:k * n * width].view(k * n, width)
        m1 = means @ d                                                    # (K + N, width)
        acc[0] += torch.dot(d.view(-1), d.view(-1))
        acc[1] += torch.dot(m1[:k].reshape(-1), m1[:k].reshape(-1))
        acc[2] += torch.dot(m1[k:].reshape(-1), m1[k:].reshape(-1))
        if plane:
            acc[3] += _ring_squares(d.view(k * n, -1, *plane))
            acc[4] += _ring_squares(m1[:k].view(k, -1, *plane))
            acc[5] += _ring_squares(m1[k:].view(n, -1, *plane))
        if share:
            per_k = m1[:k]
            centre = per_k.mean(dim=0)
            between = ((per_k * per_k).mean(dim=0) - centre * centre).clamp_min_(0)  # Var_k of the mean over n
            squares = torch.mul(d, d, out=sq_buf[:k * n * width].view(k * n, width))
            total = (squares.mean(dim=0) - centre * centre).clamp_min_(0)            # Var_{k,n}
            # a unit varies when its variance is above the rounding level of its values in the captured dtype
            level = centre + first.to(torch.float64)
            varies = total > eps2 * (total + level * level) + torch.finfo(torch.float64).tiny
            share_sum += float(torch.where(varies, between / total, 0.0).sum())
            varying += int(varies.sum())
    sq, sq_k, sq_n, b_sq, b_k, b_n = (float(v) for v in acc)
    eta2 = share_sum / varying if varying else math.nan
    inside = _snr(sq - b_sq, sq_k - b_k, sq_n - b_n, k, n) if plane else math.nan
    return Summary(snr=_snr(sq, sq_k, sq_n, k, n), time_share=eta2, interior_snr=inside)


def _ring_squares(x: torch.Tensor) -> torch.Tensor:
    """Sum of squares over the 1-pixel border of (..., H, W): top and bottom rows, then the side columns."""
    edges = (x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1])
    return sum((e * e).sum() for e in edges)  # type: ignore[return-value]


def _snr(sq: float, sq_k: float, sq_n: float, k: int, n: int) -> float:
    """Pooled time variance over pooled sample variance; rounding can leave -1e-17 where 0 is meant."""
    over_time, over_samples = max(0.0, sq / k - sq_n), max(0.0, sq / n - sq_k)
    return _ratio(over_time / n, over_samples / k)


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
