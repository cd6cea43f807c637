"""The one home of argument checks: one line naming the value and what is allowed; bools are not numbers."""

from __future__ import annotations

import math

import pytest

from timeaware.validate import check_int, check_number, check_positive, check_type, check_width, choice


@pytest.mark.parametrize("check", [lambda v: check_int("n", v, 0), lambda v: check_positive("n", v),
                                   lambda v: check_number("n", v, 0), lambda v: check_width("n", v)],
                         ids=["int", "positive", "number", "width"])
def test_a_bool_is_not_a_number(check):
    with pytest.raises(ValueError, match=r"^n=True is not allowed; it must be .+$"):
        check(True)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "1", None])
def test_check_number_refuses_non_finite_and_non_numbers(value):
    with pytest.raises(ValueError, match=r"is not allowed; it must be a finite number >= 0"):
        check_number("x", value, 0)


def test_bounds_are_as_documented():
    check_number("x", 0, 0)                  # [low, high)
    check_number("x", 0.999, 0, 1)
    with pytest.raises(ValueError, match="> 0"):
        check_number("x", 0, 0, low_open=True)
    with pytest.raises(ValueError, match=">= 0 and < 1"):
        check_number("x", 1, 0, 1)
    check_int("k", 2, 2)
    with pytest.raises(ValueError, match=r"k=1 is not allowed; it must be an integer >= 2"):
        check_int("k", 1, 2)
    with pytest.raises(ValueError, match=r"groups=0 is not allowed; it must be a positive integer"):
        check_positive("groups", 0)


def test_choice_lists_what_is_allowed_and_type_names_the_argument():
    with pytest.raises(ValueError, match=r"^norm='bn' is not allowed; choose one of batch, group$"):
        choice("norm", "bn", ("batch", "group"))
    with pytest.raises(TypeError, match=r"^seed must be int, not bool \('True'\)$"):
        check_type("seed", True, int)
    with pytest.raises(TypeError, match=r"^path must be str or bytes, not int"):
        check_type("path", 3, str | bytes)


def _callers():
    from timeaware import TimeAware, TimeConv2d
    from timeaware.diffusion.ddpm import make_scheduler
    from timeaware.diffusion.train import TrainConfig
    from timeaware.embeddings import TimeDomain
    from timeaware.node.run_config import NodeRunConfig

    return {
        "offset='film' is not allowed; choose one of linear, embedding, none":
            lambda: TimeConv2d(2, 2, 3, config=TimeAware(), offset="film"),
        "sampler='euler' is not allowed; choose one of ddpm, ddim, dpm": lambda: make_scheduler("euler"),
        "kind='minutes' is not allowed; choose one of steps, continuous, sigma": lambda: TimeDomain("minutes"),
        "data='mnist' is not allowed; choose one of digits, cifar10": lambda: NodeRunConfig(data="mnist"),
        "data=3 is not allowed; choose one of digits": lambda: TrainConfig(data=3),
    }


@pytest.mark.parametrize("message", list(_callers()))
def test_the_callers_report_a_bad_name_through_validate(message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")) as caught:
        _callers()[message]()
    assert "\n" not in str(caught.value)
