"""The ODE block: exact gradients, adjoint = direct backprop, exact NFE counts, readable solver failures."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from timeaware.config import TimeAware
from timeaware.node import NodeClassifier, ODEBlock, ODEFunc, SolverError, SolverOptions

SMOOTH = TimeAware(norm="group", groups=1, activation="softplus")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest, and far faster on a busy shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _func(channels=2, config=SMOOTH, **kwargs):
    return ODEFunc(channels, config, size=(3, 3), **kwargs).double()


class CallCounter(nn.Module):
    """The test's own count of ODE-function calls, independent of the block's bookkeeping."""

    def __init__(self, func):
        super().__init__()
        self.func, self.calls = func, 0

    def forward(self, t, x):
        self.calls += 1
        return self.func(t, x)


@pytest.mark.parametrize("time", ["concat", "mlp"])
def test_ode_block_gradients_match_finite_differences(time):
    block = ODEBlock(_func(time=time), SolverOptions(method="rk4", options={"step_size": 0.5}, adjoint=False))
    z0 = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (z0,), eps=1e-6, atol=1e-5)


def test_adjoint_and_direct_backprop_give_the_same_gradients():
    func = _func(config=SMOOTH.replace(positional="linear"))
    z0 = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    grads = []
    for adjoint in (True, False):
        block = ODEBlock(func, SolverOptions(rtol=1e-8, atol=1e-8, adjoint=adjoint))
        z = z0.clone().requires_grad_()
        func.zero_grad()
        block(z).pow(2).sum().backward()
        grads.append([z.grad.clone()] + [p.grad.clone() for p in func.parameters()])
    for a, d in zip(*grads):
        torch.testing.assert_close(a, d, rtol=1e-4, atol=1e-5)  # both agree to the solver tolerance


@pytest.mark.parametrize("adjoint", [True, False])
def test_nfe_counts_equal_the_calls_of_the_ode_function(adjoint):
    counter = CallCounter(_func())
    block = ODEBlock(counter, SolverOptions(adjoint=adjoint))
    z0 = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    out = block(z0)
    forward_calls = counter.calls
    out.sum().backward()
    assert block.stats.nfe_forward == forward_calls > 0
    assert block.stats.nfe_backward == counter.calls - forward_calls
    assert (block.stats.nfe_backward > 0) == adjoint
    block(z0)  # a new solve starts a new count
    assert block.stats.nfe_forward == forward_calls and block.stats.nfe_backward == 0
    assert "no adjoint" in str(block.stats) or adjoint


def test_fixed_step_rk4_makes_four_calls_per_step():
    block = ODEBlock(_func(), SolverOptions(method="rk4", options={"step_size": 0.125}, adjoint=False))
    block(torch.randn(1, 2, 3, 3, dtype=torch.float64))
    assert block.stats.nfe_forward == 4 * 8


def test_step_budget_raises_solver_error_naming_cause_and_options():
    block = ODEBlock(_func(config=TimeAware(norm="batch")), SolverOptions(options={"max_num_steps": 2}))
    with pytest.raises(SolverError) as err:
        block(torch.randn(2, 2, 3, 3, dtype=torch.float64))
    message = str(err.value)
    assert isinstance(err.value, RuntimeError) and "\n" not in message
    for words in ("max_num_steps exceeded", "too stiff", "too smooth", "rtol", "max_num_steps", "activation",
                  "positional"):
        assert words in message


def test_adjoint_step_budget_failure_in_backward_is_a_solver_error():
    model = NodeClassifier(1, 3, (8, 8), channels=4, config=TimeAware(groups=2),
                           solver=SolverOptions(adjoint_options={"max_num_steps": 1}))
    loss = model(torch.rand(2, 1, 8, 8)).sum()
    with pytest.raises(SolverError, match="max_num_steps exceeded"):
        loss.backward()  # the block explains its own adjoint failure: no wrapper needed at the call site


def test_adjoint_gradients_equal_torchdiffeq_odeint_adjoint():
    from torchdiffeq import odeint_adjoint

    torch.manual_seed(0)
    solver = SolverOptions(rtol=1e-6, atol=1e-6)
    block = ODEBlock(_func(), solver)
    z0 = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    params = list(block.parameters())
    ours = torch.autograd.grad(block(z0).square().sum(), [z0, *params])
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    out = odeint_adjoint(block.func, z0, t, **solver.solve_kwargs(adjoint=True))[-1]
    reference = torch.autograd.grad(out.square().sum(), [z0, *params])
    assert block.stats.nfe_backward > 0
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a, b)


def test_bad_solver_options_are_one_line_value_errors():
    with pytest.raises(ValueError, match="method='rk5' is not allowed"):
        SolverOptions(method="rk5")
    with pytest.raises(ValueError, match="rtol=-1"):
        SolverOptions(rtol=-1)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(height=st.integers(5, 20), width=st.integers(5, 20))
def test_the_positional_map_fits_the_ode_state_at_any_image_size(height, width):
    """Two stride-2 convs (kernel 3, padding 1) leave ⌈H/4⌉ × ⌈W/4⌉; the map t·P must be built at that size."""
    model = NodeClassifier(1, 3, (height, width), channels=2, config=SMOOTH.replace(positional="linear"),
                           solver=SolverOptions(method="euler", options={"step_size": 1.0}, adjoint=False))
    images = torch.rand(1, 1, height, width)
    assert model.initial_state(images).shape[-2:] == (-(-height // 4), -(-width // 4))
    assert model(images).shape == (1, 3)  # the map was added to the state: its size matched


def test_classifier_normalises_images_with_its_mean_and_std():
    mean, std = [0.2, 0.5, 0.4], [0.3, 0.1, 0.2]
    model = NodeClassifier(3, 7, (8, 8), channels=4, config=SMOOTH, mean=mean, std=std).eval()
    plain = NodeClassifier(3, 7, (8, 8), channels=4, config=SMOOTH).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k not in ("mean", "std")}, strict=False)
    images = torch.rand(2, 3, 8, 8)
    normalised = (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(model(images), plain(normalised))
    assert (model(images) - plain(images)).abs().amax() > 1e-3
