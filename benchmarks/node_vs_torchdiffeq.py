"""Forward + backward time per batch: our ODE block against torchdiffeq's example ODE function.

The anchor is the ``ODEfunc`` of torchdiffeq's ``examples/odenet_mnist.py`` (norm–relu–ConcatConv2d–
norm–relu–ConcatConv2d–norm with GroupNorm(min(32, dim), dim)), rewritten inline below and solved
with plain ``odeint_adjoint``. Ours gets the anchor's weights, so both integrate the same dynamics
and make the same NFE; the ratio (anchor time / ours) >= 1 means ours is at least as fast. The rows
after it price the paper's fixes (positional timestep embedding, zero operand bias) against ours.

    PYTHONPATH=src python benchmarks/node_vs_torchdiffeq.py [--width 64 --batch 32 --size 8 --repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torchdiffeq import odeint_adjoint

from timeaware.config import TimeAware
from timeaware.node import ODEBlock, ODEFunc, SolverOptions


class AnchorConcatConv2d(nn.Module):
    """torchdiffeq example's ConcatConv2d: a t channel first, then a conv."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self._layer = nn.Conv2d(dim_in + 1, dim_out, 3, 1, 1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = torch.ones_like(x[:, :1, :, :]) * t
        return self._layer(torch.cat([tt, x], 1))


class AnchorODEfunc(nn.Module):
    """torchdiffeq example's ODEfunc, counting its own NFE like the original."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.GroupNorm(min(32, dim), dim) for _ in range(3))
        self.relu = nn.ReLU(inplace=True)
        self.conv1, self.conv2 = AnchorConcatConv2d(dim, dim), AnchorConcatConv2d(dim, dim)
        self.nfe = 0

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        out = self.conv1(t, self.relu(self.norm1(x)))
        out = self.conv2(t, self.relu(self.norm2(out)))
        return self.norm3(out)


def _time(step: Callable[[], tuple[int, int]], repeats: int) -> tuple[float, int, int]:
    step()  # warm-up
    times, nfe = [], (0, 0)
    for _ in range(repeats):
        start = time.perf_counter()
        nfe = step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), *nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=8, help="spatial size of the ODE state (CIFAR-10: 8)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c, hw = args.width, (args.size, args.size)
    z0 = torch.randn(args.batch, c, *hw)
    solver = SolverOptions()  # dopri5, rtol = atol = 1e-3, adjoint: the paper's and the example's setting
    t = torch.tensor([0.0, 1.0])

    anchor = AnchorODEfunc(c)

    def anchor_step() -> tuple[int, int]:
        anchor.nfe = 0
        z = z0.clone().requires_grad_()
        out = odeint_adjoint(anchor, z, t, rtol=solver.rtol, atol=solver.atol, method=solver.method)[-1]
        forward = anchor.nfe
        out.pow(2).mean().backward()
        return forward, anchor.nfe - forward

    base = TimeAware(groups=min(32, c))
    variants = {"ours (same weights)": base, "ours + positional (linear)": base.replace(positional="linear"),
                "ours + zero operand bias": base.replace(operand_bias="zero")}
    rows = [("torchdiffeq example ODEfunc", sum(p.numel() for p in anchor.parameters()), *_time(anchor_step,
                                                                                              args.repeats))]
    for name, config in variants.items():
        block = ODEBlock(_from_anchor(anchor, config, hw), solver)

        def step(block: ODEBlock = block) -> tuple[int, int]:
            z = z0.clone().requires_grad_()
            block(z).pow(2).mean().backward()  # the block reports solver failures itself, both ways
            return block.stats.nfe_forward, block.stats.nfe_backward

        rows.append((name, sum(p.numel() for p in block.parameters()), *_time(step, args.repeats)))

    with torch.no_grad():
        same = (anchor(torch.tensor(0.3), z0) - _from_anchor(anchor, base, hw)(0.3, z0)).abs().max()
    anchor_ms, ours_ms = rows[0][2], rows[1][2]
    print(f"C={c}, batch {args.batch}, state {c}x{args.size}x{args.size}, dopri5 rtol=atol=1e-3, adjoint, "
          f"{args.threads} thread(s), median of {args.repeats}; max |f_anchor - f_ours| = {same:.1e}\n")
    print("| ODE function | params | NFE-F | NFE-B | fwd+bwd ms/batch | ms/NFE | anchor/this | this/ours |")
    print("|---|---|---|---|---|---|---|---|")
    for name, params, ms, nf, nb in rows:
        print(f"| {name} | {params} | {nf} | {nb} | {ms:.1f} | {ms / (nf + nb):.2f} | {anchor_ms / ms:.2f} | "
              f"{ms / ours_ms:.2f} |")


def _from_anchor(anchor: AnchorODEfunc, config: TimeAware, hw: tuple[int, int]) -> ODEFunc:
    """Our ODE function with the anchor's weights (the fixes' extra parameters keep their own init)."""
    func = ODEFunc(anchor.norm1.num_channels, config, size=hw)
    weights = {k.replace("_layer", "conv"): v for k, v in anchor.state_dict().items()}
    missing = func.load_state_dict(weights, strict=False).missing_keys
    if any(not k.startswith("map") for k in missing):
        raise RuntimeError(f"anchor weights do not cover {missing}")
    if config.operand_bias == "zero":
        for conv in (func.conv1, func.conv2):
            nn.init.zeros_(conv.conv.bias)
    return func


if __name__ == "__main__":
    main()
