"""Fréchet distance on Gaussians with a closed-form answer; the missing-Inception message; protocols."""

import pytest
import torch
from torch import nn

from timeaware.diffusion.metrics import INCEPTION_HELP, Protocol, fid, frechet_distance, inception_score


class Identity(nn.Module):
    """Features = the input: lets synthetic features go straight into torchmetrics' FID."""

    num_features = 4

    def forward(self, x):
        return x


def gaussian(n: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """n samples whose sample mean and sample covariance are exactly ``mean`` and diag(std²)."""
    z = torch.randn(n, len(mean), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / (n - 1))).T  # whiten: sample covariance = I
    return mean + z * std


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0, 0.5]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    s1, s2 = torch.tensor([1.0, 2.0, 0.5, 1.0]), torch.tensor([2.0, 1.0, 0.5, 3.0])
    # ||μ1-μ2||² + tr(Σ1 + Σ2 - 2(Σ1Σ2)^½) = Σ(μ1-μ2)² + Σ(σ1 - σ2)² for diagonal covariances
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    got = frechet_distance(Identity(), gaussian(400, mu1, s1), gaussian(300, mu2, s2))
    assert got == pytest.approx(expected.item(), rel=1e-4)


def test_frechet_distance_of_a_distribution_with_itself_is_zero():
    x = gaussian(200, torch.zeros(4), torch.ones(4))
    assert frechet_distance(Identity(), x, x) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("call", [lambda: fid(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), None),
                                  lambda: inception_score(torch.rand(2, 3, 8, 8), None)])
def test_missing_inception_says_how_to_provide_it(call):
    with pytest.raises(ValueError) as err:
        call()
    assert str(err.value) == INCEPTION_HELP and "\n" not in INCEPTION_HELP
    assert "timeaware[fid]" in INCEPTION_HELP and "--inception-weights" in INCEPTION_HELP


def test_protocol_names_everything_a_score_depends_on():
    p = Protocol("FD-classifier", 512, "digits train (1437 images)", "ddim", 50, "ema", "classifier x", 0)
    text = str(p)
    assert all(s in text for s in ("FD-classifier", "512 samples", "ddim-50", "ema weights", "digits train"))
    assert "FID" not in text


class _RunsCode:
    def __reduce__(self) -> tuple:
        return (print, ("this ran",))


def test_inception_weights_that_would_run_code_are_refused_before_torch_fidelity_unpickles_them(
        tmp_path, monkeypatch) -> None:
    import pickle

    import torchmetrics.utilities.imports as imports

    from timeaware.diffusion.metrics import require_inception

    monkeypatch.setattr(imports, "_TORCH_FIDELITY_AVAILABLE", True)  # its loader is not installed here
    bad = tmp_path / "pt_inception.pth"
    bad.write_bytes(pickle.dumps({"w": _RunsCode()}))
    with pytest.raises(ValueError, match=r"pt_inception\.pth: refused, loading it would execute code"):
        require_inception(bad)
    good = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2)}, good)
    assert require_inception(good) == good
