import pytest
import torch

from timeaware.data import ImageData, adjust_hue, adjust_saturation, augment, random_crop, random_flip


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_crop_keeps_shape_and_is_a_shifted_window_of_the_padded_image():
    x = torch.rand(6, 3, 8, 8)
    out = random_crop(x, 2, _gen())
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_crop_draws_offsets_across_the_whole_padding_range_and_zero_padding_is_identity():
    x = torch.zeros(400, 1, 9, 9)
    x[:, :, 4, 4] = 1.0  # a marker pixel: where it lands is the drawn offset
    out = random_crop(x, 4, _gen())
    positions = {tuple(p.tolist()) for p in (out[:, 0] == 1).nonzero()[:, 1:]}
    assert len(positions) == 81 and (out.sum(dim=(1, 2, 3)) == 1).all()
    assert torch.equal(random_crop(x, 0, _gen()), x)


def test_flip_twice_is_identity_and_flips_about_half():
    x = torch.rand(200, 3, 4, 4)
    assert torch.equal(random_flip(random_flip(x, _gen(), p=1.0), _gen(), p=1.0), x)
    flipped = (random_flip(x, _gen()) != x).flatten(1).any(1).float().mean().item()
    assert 0.35 < flipped < 0.65


def test_hue_shift_of_zero_or_one_turn_is_identity_and_red_turns_green():
    x = torch.rand(4, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(adjust_hue(x, torch.zeros(4, dtype=torch.float64)), x)
    torch.testing.assert_close(adjust_hue(x, torch.ones(4, dtype=torch.float64)), x)
    red = torch.zeros(1, 3, 1, 1, dtype=torch.float64)
    red[:, 0] = 1.0
    green = adjust_hue(red, torch.tensor([1 / 3], dtype=torch.float64))
    torch.testing.assert_close(green.flatten(), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("factor", [0.95, 1.05, 0.0])
def test_saturation_jitter_keeps_grays_gray(factor):
    gray = torch.rand(3, 1, 4, 4).expand(3, 3, 4, 4)
    out = adjust_saturation(gray, torch.full((3,), factor))
    torch.testing.assert_close(out, gray)
    assert adjust_saturation(torch.rand(3, 3, 4, 4), torch.zeros(3)).std(dim=1).amax() < 1e-6  # factor 0: gray


def test_augment_is_reproducible_from_the_generator_and_skips_colour_for_gray():
    x = torch.rand(8, 3, 8, 8)
    assert torch.equal(augment(x, _gen(3)), augment(x, _gen(3)))
    assert not torch.equal(augment(x, _gen(3)), augment(x, _gen(4)))
    gray = torch.rand(8, 1, 8, 8)
    no_colour = augment(gray, _gen(1), hue=0.0, saturation=0.0, flip=False)
    assert torch.equal(augment(gray, _gen(1), flip=False), no_colour)
    assert augment(x, _gen(1)).min() >= 0 and augment(x, _gen(1)).max() <= 1


@pytest.mark.parametrize("limit", ["5", 0, -3, True, 2.5])
def test_a_bad_subset_limit_is_a_one_line_value_error(limit):
    data = ImageData(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long), 1, "toy")
    with pytest.raises(ValueError, match=rf"^limit={limit!r} is not allowed; it must be a positive integer$"):
        data.subset(limit)
    assert data.subset(None) is data and len(data.subset(9)) == 4 and len(data.subset(3)) == 3
