"""What one NODE training run is: data, model, solver and recipe in one frozen, JSON-able config.

Presets name whole recipes; ``with_overrides`` changes any field by name (a run field, a ``TimeAware``
field or a solver field), which is what ``--set key=value`` and the experiments' settings use.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..config import TimeAware, field_names, parse_setting
from ..data import check_source
from ..validate import MAX_LR, check_int, check_number, check_positive, choice
from .func import TIME_INPUTS
from .solve import SolverOptions

PRESETS = ("quick", "paper")


MAX_EPOCHS = 10**5  # 400 times the paper's 250; more is a typo that would train for years
MAX_PADDING = 64    # random-crop padding: twice a CIFAR image's side (the paper pads by 4)


@dataclass(frozen=True)
class NodeRunConfig:
    """One training run. Defaults are the paper's recipe (section 4.1); ``preset("quick")`` shrinks it."""

    data: str = "digits"          # dataset name or .npz path (see timeaware.data)
    size: int | None = None       # resize to size×size; None: native, digits 16 (8×8 leaves a 2×2 ODE state)
    limit: int | None = None      # train on a fixed random subset of this many images (None: all)
    test_limit: int | None = None  # evaluate on a fixed random subset of the test split (None: all)
    channels: int = 64            # width C of the stem, ODE state and head
    time: str = "concat"          # ODE function time input: concat (ConcatConv) | mlp (Table 2)
    model: TimeAware = field(default_factory=TimeAware)
    solver: SolverOptions = field(default_factory=SolverOptions)
    epochs: int = 250
    batch_size: int = 128
    lr: float = 0.1               # SGD with momentum 0.9 and weight decay 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    patience: int = 15            # ReduceLROnPlateau on the training loss
    dropout: float = 0.5
    padding: int = 4              # random-crop padding
    hue: float = 0.05             # colour jitter (skipped for 1-channel images)
    saturation: float = 0.05
    flip: bool | None = None      # horizontal flip; None: on, except for digits (a mirrored digit is another glyph)
    seed: int = 0
    threads: int | None = None    # intra-op CPU threads (None: torch's default); see preset("quick")

    def __post_init__(self) -> None:
        for name in ("channels", "batch_size", "patience"):
            check_positive(name, getattr(self, name))
        check_int("epochs", self.epochs, 1, MAX_EPOCHS)
        for name in ("limit", "test_limit", "size", "threads"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        check_source(self.data)
        check_int("seed", self.seed, 0)
        check_int("padding", self.padding, 0, MAX_PADDING)
        if self.flip is not None and not isinstance(self.flip, bool):
            raise ValueError(f"flip={self.flip!r} is not allowed; it must be true, false or null")
        check_number("lr", self.lr, low=0.0, high=MAX_LR, low_open=True)
        for name in ("momentum", "weight_decay", "hue", "saturation"):
            check_number(name, getattr(self, name), low=0.0, high=MAX_LR if name == "weight_decay" else math.inf)
        check_number("dropout", self.dropout, low=0.0, high=1.0)
        for name in ("rtol", "atol", "t1", "adjoint_rtol", "adjoint_atol"):  # SolverOptions checks > 0
            if getattr(self.solver, name) is not None:
                check_number(name, getattr(self.solver, name), low=0.0, low_open=True)
        self.model.check_channels(self.channels)
        choice("time", self.time, TIME_INPUTS)

    @property
    def image_size(self) -> int | None:
        return self.size if self.size is not None or self.data != "digits" else 16

    @property
    def use_flip(self) -> bool:
        return self.flip if self.flip is not None else self.data != "digits"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeRunConfig:
        unknown = sorted(set(data) - set(run_fields()) - {"model", "solver"})
        if unknown:
            allowed = ", ".join([*run_fields(), "model", "solver"])
            raise ValueError(f"unknown run setting {unknown[0]!r}; allowed: {allowed}")
        data = dict(data)
        model, solver = TimeAware.from_dict(data.pop("model", {})), SolverOptions(**data.pop("solver", {}))
        return cls(model=model, solver=solver, **data)

    def with_overrides(self, changes: dict[str, Any]) -> NodeRunConfig:
        """A copy with fields changed by name; values may be strings (parsed like the field's type)."""
        run: dict[str, Any] = {}
        model: dict[str, Any] = {}
        solver: dict[str, Any] = {}
        for key, value in changes.items():
            if key in model_fields():
                model[key] = parse_setting(key, value, getattr(self.model, key))
            elif key in solver_fields():
                solver[key] = parse_setting(key, value, getattr(self.solver, key))
            elif key in run_fields():
                run[key] = parse_setting(key, value, getattr(self, key))
            else:
                raise ValueError(f"unknown setting {key!r}; allowed: {', '.join(allowed_keys())}")
        return dataclasses.replace(self, model=self.model.replace(**model),
                                   solver=dataclasses.replace(self.solver, **solver), **run)


def run_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(NodeRunConfig) if f.name not in ("model", "solver")]


def model_fields() -> list[str]:
    return field_names()


def solver_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(SolverOptions)]


def allowed_keys() -> list[str]:
    return run_fields() + model_fields() + solver_fields()


def preset(name: str) -> NodeRunConfig:
    """``paper``: the paper's recipe on CIFAR-10. ``quick``: minutes on a 2-core CPU.

    quick = a fixed subset of 1,000 train / 500 test images (digits: at 16×16, all 360 test images),
    C = 16 with G = 8 (two channels per group, as the paper's 64 / 32), 10 epochs of batch 32 at lr 0.05,
    dropout 0.1 (0.5 of only 16 features kept train accuracy near 50% after 10 epochs), crop padding 2
    (the paper's 4 px at 32 px, scaled to 16 px), one intra-op thread: the tiny convolutions gain nothing
    from more, and on a busy 2-core machine two threads made each call ~100× slower.
    """
    if name == "paper":
        return NodeRunConfig(data="cifar10")
    if name == "quick":
        return NodeRunConfig(data="digits", limit=1000, test_limit=500, channels=16, model=TimeAware(groups=8),
                             epochs=10, batch_size=32, lr=0.05, dropout=0.1, padding=2, threads=1)
    raise ValueError(f"preset {name!r} is unknown; choose one of {', '.join(PRESETS)}")
