"""``Moments``' update and η² terms as one numba pass each over the units, in float64, on the CPU.

Used for calls of at most ``metrics.MAX_FUSED_ROWS`` inputs. Why: the torch update
(``metrics.Moments._fold``, ``_time_share``) is about a dozen elementwise operations per captured
tensor. With a few inputs per call, as in an audit of a large U-Net on two inputs, those passes and
their per-operation overhead cost more than the hooked layers themselves (docs/audit.md, "Cost"). Here
one loop reads Y and M once and writes M once, with the per-unit sums in float64 registers. The rows
go in as a tuple, so numba compiles one version per N and unrolls the loop over them; with more rows
the loop is no longer unrolled, it stops vectorizing, and the torch update, whose
per-operation cost is then shared by many rows, is the faster one. ``tests/test_audit.py`` checks
that both give the same numbers.

Importing this module imports numba (``metrics`` uses the torch update when that fails). The compiled
code is cached on disk by numba; a new process still spends about 0.6 s loading it on first use
(docs/audit.md, "Cost").
"""

from __future__ import annotations

import numba
import numpy as np
import torch


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})  # reassociated: vectorizes
def _fold(rows: tuple[np.ndarray, ...], means: tuple[np.ndarray, ...], k: int, border: np.ndarray,
          sample_sum: np.ndarray, between: np.ndarray, share: bool, out: np.ndarray) -> None:
    n = len(rows)
    weight = (k - 1.0) / k
    step, per_row = 1.0 / k, 1.0 / n  # multiplications, not divisions, in the loop
    time_all = sample_all = time_border = sample_border = 0.0
    for u in range(rows[0].shape[0]):
        first = np.float64(rows[0][u])
        f_sum = f_squares = d_sum = d_squares = 0.0
        for i in range(n):
            y = np.float64(rows[i][u])
            m = np.float64(means[i][u]) if k > 1 else y  # M = Y at the first call (nothing to read)
            f = y - first
            f_sum += f
            f_squares += f * f
            d = y - m
            means[i][u] = m + d * step
            d_sum += d
            d_squares += d * d
        sample = f_squares - f_sum * f_sum * per_row  # N·Var_n Y
        edge = np.float64(border[u])
        time_all += d_squares                          # Σ_n δ², weighted by (k − 1)/k in ``Moments.summary``
        sample_all += sample
        time_border += d_squares * edge
        sample_border += sample * edge
        if share:  # S and B start at the first call (nothing to read)
            sample_sum[u] = (sample_sum[u] if k > 1 else 0.0) + sample
            between[u] = (between[u] if k > 1 else 0.0) + weight * (d_sum * per_row) ** 2
    out[0], out[1], out[2], out[3] = time_all, sample_all, time_border, sample_border


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def _time_share(means: tuple[np.ndarray, ...], k: int, sample_sum: np.ndarray, between: np.ndarray, eps2: float,
                tiny: float) -> tuple[float, int]:
    n = len(means)
    shares, count = 0.0, 0
    for u in range(sample_sum.shape[0]):
        level = 0.0  # N·mean_{k,n} Y
        for i in range(n):
            level += means[i][u]
        total = np.float64(sample_sum[u]) + n * np.float64(between[u])  # K·N·Var_{k,n} Y = S + N·B
        if total > eps2 * (total + k / n * level * level) + tiny * k * n:
            shares += between[u] / total
            count += 1
    return n * shares, count


class Sums:
    """One ``Moments``' M (N, U), border mask (U,) and, for an output, S and B (U,), seen as numpy arrays.

    ``border`` is ``metrics.border_mask`` (uint8: one byte per unit to read), None for no border.
    """

    def __init__(self, mean: torch.Tensor, border: torch.Tensor | None, sample_sum: torch.Tensor | None,
                 between: torch.Tensor | None) -> None:
        self.means = tuple(mean.numpy())
        self.border = np.zeros(mean.shape[1], np.uint8) if border is None else border.numpy()
        self.share = sample_sum is not None and between is not None
        self.sample_sum = np.empty(0) if sample_sum is None else sample_sum.numpy()
        self.between = np.empty(0) if between is None else between.numpy()

    def fold(self, d: torch.Tensor, k: int) -> torch.Tensor:
        """The k-th call's (Σ δ², Σ N·Var_n, both again over the border), float64; updates M, S and B in place."""
        rows = tuple((d if d.stride(1) == 1 else d.contiguous()).numpy())
        out = np.empty(4)
        _fold(rows, self.means, k, self.border, self.sample_sum, self.between, self.share, out)
        return torch.from_numpy(out)

    def time_share(self, k: int, eps2: float, tiny: float) -> tuple[float, int]:
        """``Moments._time_share``: Σ of N·B / (S + N·B) over the units that vary, and their number."""
        shares, count = _time_share(self.means, k, self.sample_sum, self.between, eps2, tiny)
        return float(shares), int(count)
