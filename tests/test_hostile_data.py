"""Hostile dataset files and solver options: a forged, empty, degenerate or inconsistent .npz and a solver option
that would allocate terabytes or crash torchdiffeq are each refused in one line naming the value, before any
array is read or allocated."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from launch import error_line
from timeaware import resources
from timeaware.cli import main
from timeaware.data import load_images
from timeaware.node.solve import SolverOptions


def _arrays(**changes: np.ndarray) -> dict[str, np.ndarray]:
    """A valid CIFAR-style dataset (8 train and 4 test RGB 4×4 images, classes 0..2) with ``changes``."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (8, 4, 4, 3), dtype=np.uint8), "y_train": np.arange(8) % 3,
              "x_test": rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8), "y_test": np.arange(4) % 2}
    return {**arrays, **changes}


def _save(tmp_path: Path, name: str, **changes: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **_arrays(**changes))
    return path


def _forged(tmp_path: Path, key: str, shape: tuple[int, ...]) -> Path:
    """A small .npz whose ``key`` header claims ``shape`` while its data stays that of the valid array."""
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in _arrays().items():
            header = np.lib.format.header_data_from_array_1_0(array)
            if name == key:
                header["shape"] = shape
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, header)
            archive.writestr(f"{name}.npy", buf.getvalue() + array.tobytes())
    return path


def _no_load(*args: object, **kwargs: object) -> None:
    raise AssertionError("np.load was called: the file's arrays were read before the check")


def test_a_valid_file_loads_and_both_splits_share_the_training_classes(tmp_path: Path) -> None:
    path = _save(tmp_path, "ok.npz", y_train=(np.arange(8) % 3)[:, None].astype(np.uint8))  # Keras-style (N, 1)
    train, test = load_images(str(path), "train"), load_images(str(path), "test")
    assert train.x.shape == (8, 3, 4, 4) and test.x.shape == (4, 3, 4, 4) and train.y.tolist() == [0, 1, 2] * 2 + [0, 1]
    assert train.num_classes == test.num_classes == 3  # the test split holds only 0 and 1: classes come from train


def test_a_forged_header_is_refused_before_any_array_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _forged(tmp_path, "x_train", (100000, 1024, 1024, 3))  # a few hundred bytes claiming 293 GiB
    monkeypatch.setattr(np, "load", _no_load)
    with pytest.raises(ValueError, match=r"liar.npz: x_train claims shape \(100000, 1024, 1024, 3\) uint8 "
                                         r"\(314,572,800,000 bytes\) but holds only 384; the file is truncated"):
        load_images(str(path), "test")


def test_a_member_that_is_not_an_npy_array_is_named(tmp_path: Path) -> None:
    path = _save(tmp_path, "ok.npz")
    with zipfile.ZipFile(path, "a") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("y_test.npy", b"not numpy at all")  # the later entry of a name is the one read
    with pytest.raises(ValueError, match=rf"^{path}: y_test is not a valid .npy array \(the magic string is not "
                                         r"correct; .*\)$"):
        load_images(str(path), "train")


def test_an_honest_array_too_large_for_memory_is_refused_before_it_is_decompressed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "zeros.npz"
    arrays = _arrays(x_train=np.zeros((8192, 4, 4, 3), np.uint8), y_train=np.arange(8192) % 3)
    np.savez_compressed(path, **arrays)  # 393,216 bytes of images (3.4 MiB as float32) deflated to a few hundred
    monkeypatch.delenv(resources.NO_CHECK_ENV, raising=False)
    monkeypatch.setattr(resources, "available_memory", lambda: 2**20)  # 1 MiB free, whatever the machine
    with monkeypatch.context() as patched:
        patched.setattr(np, "load", _no_load)
        with pytest.raises(ValueError, match=r"zeros.npz: x_train of shape \(8192, 4, 4, 3\) as float32 needs about "
                                             r".* GiB of memory but 0.0 GiB is free"):
            load_images(str(path), "train")
    with resources.memory_check_disabled():
        assert load_images(str(path), "train").x.shape == (8192, 3, 4, 4)


@pytest.mark.parametrize(("changes", "message"), [
    ({"x_train": np.zeros((0, 4, 4, 3), np.uint8), "y_train": np.zeros(0, np.int64)},
     "x_train holds 0 images; need at least 1"),
    ({"x_test": np.zeros((0, 4, 4, 3), np.uint8), "y_test": np.zeros(0, np.int64)},
     "x_test holds 0 images; need at least 1"),
    ({"x_train": np.zeros((8, 0, 0, 3), np.uint8)}, "x_train images are 0×0; need at least 1×1"),
    ({"x_train": np.zeros((8, 4, 4, 2), np.uint8)}, r"x_train has shape \(8, 4, 4, 2\) dtype uint8; expected uint8 "
                                                     r"\(N, H, W, C\) with C in 1 or 3"),
    ({"x_train": np.zeros((8, 4, 4, 3), object)}, "x_train has shape .* dtype object"),
    ({"y_train": np.arange(8) / 2}, r"y_train has shape \(8,\) dtype float64; expected integer labels of shape \(8,\)"),
    ({"y_train": np.arange(7)}, r"y_train has shape \(7,\) dtype int64; expected integer labels of shape \(8,\)"),
    ({"y_train": np.array([2**63 + 5] + [0] * 7, np.uint64)},
     "y_train labels reach 9223372036854775813; allowed: integers 0 to 99,999 \\(at most 100,000 classes\\)"),
    ({"y_train": np.array([2**40] + [0] * 7)}, "y_train labels reach 1099511627776; allowed: integers 0 to 99,999"),
    ({"y_test": np.array([0, -3, 1, 2])}, "y_test labels go down to -3; allowed: integers 0 to 99,999"),
])
def test_an_empty_or_degenerate_file_is_a_one_line_error(changes, message, tmp_path: Path) -> None:
    path = _save(tmp_path, "bad.npz", **changes)
    with pytest.raises(ValueError, match=rf"^{path}: {message}") as err:
        load_images(str(path), "train")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("changes", "message"), [
    ({"y_test": np.array([0, 1, 50, 2])}, "y_test holds label 50 but y_train's labels are 0 to 2 \\(3 classes\\)"),
    ({"x_test": np.zeros((4, 4, 4, 1), np.uint8)}, "x_test has 1 channel\\(s\\) but x_train has 3"),
])
@pytest.mark.parametrize("split", ["train", "test"])
def test_splits_that_do_not_match_are_refused_whichever_split_is_loaded(changes, message, split, tmp_path) -> None:
    path = _save(tmp_path, "mixed.npz", **changes)
    with pytest.raises(ValueError, match=rf"^{path}: {message}"):
        load_images(str(path), split)


def test_splits_of_different_sizes_are_refused_unless_both_are_resized(tmp_path: Path) -> None:
    path = _save(tmp_path, "sizes.npz", x_test=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=rf"^{path}: x_test images are 8×8 but x_train's are 4×4; both splits must"):
        load_images(str(path), "train")  # the model is built for the training size: test images would not fit
    assert load_images(str(path), "test", size=6).x.shape == (4, 3, 6, 6)


def test_constant_images_cannot_be_normalised(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (8, 4, 4, 3), dtype=np.uint8)
    x[..., 1] = 7  # every green pixel equal
    data = load_images(str(_save(tmp_path, "const.npz", x_train=x)), "train")
    with pytest.raises(ValueError, match=r"^data 'const': channel 1 has zero variance over its 8 images \(all pixels "
                                         r"equal\); cannot normalise$"):
        data.channel_stats()
    assert min(load_images(str(_save(tmp_path, "ok.npz")), "train").channel_stats()[1]) > 0


@pytest.mark.parametrize(("options", "message"), [
    ({"step_size": 1e-12}, r"options.step_size=1e-12 is not allowed; it must be >= t1/1,000,000 = 1e-06"),
    ({"step_size": 0}, r"options.step_size=0 is not allowed; it must be a finite number > 0"),
    ({"step_size": -0.1}, r"options.step_size=-0.1 is not allowed; it must be a finite number > 0"),
    ({"step_size": "x"}, r"options.step_size='x' is not allowed; it must be a finite number > 0"),
    ({"step_size": float("nan")}, r"options.step_size=nan is not allowed"),
    ({"first_step": True}, r"options.first_step=True is not allowed; it must be a finite number > 0"),
    ({"max_step": 1e-9}, r"options.max_step=1e-09 is not allowed; it must be >= t1/1,000,000"),
    ({"min_step": -1}, r"options.min_step=-1 is not allowed; it must be a finite number >= 0"),
    ({"max_num_steps": 0}, r"options.max_num_steps=0 is not allowed; it must be an integer >= 1"),
    ({"max_num_steps": 1e3}, r"options.max_num_steps=1000.0 is not allowed; it must be an integer >= 1"),
    ({"max_num_steps": 2**31}, r"options.max_num_steps=2147483648 is not allowed; it must be an integer from 1 to "),
    ({"max_order": 13}, r"options.max_order=13 is not allowed; it must be an integer from 1 to 12"),
])
def test_a_bad_solver_option_is_refused_by_name(options, message) -> None:
    with pytest.raises(ValueError, match=rf"^{message}"):
        SolverOptions(method="euler", options=options)
    with pytest.raises(ValueError, match=rf"^adjoint_{message}"):
        SolverOptions(method="euler", adjoint_options=options)


def test_step_bounds_follow_t1_and_good_options_pass() -> None:
    assert SolverOptions(method="euler", t1=10.0, options={"step_size": 1e-5}).options == {"step_size": 1e-5}
    bound = r"^options.step_size=1e-06 is not allowed; it must be >= t1/1,000,000 = 1e-05 \(more than 1,000,000 steps"
    with pytest.raises(ValueError, match=bound):
        SolverOptions(method="euler", t1=10.0, options={"step_size": 1e-6})
    solver = SolverOptions(options={"max_num_steps": 1000, "first_step": 0.1, "min_step": 0, "safety": 0.9},
                           adjoint_options={"max_num_steps": 50})
    assert solver.solve_kwargs(adjoint=True)["options"]["max_num_steps"] == 1000


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], out: Path) -> str:
    assert main([*argv, "--out", str(out)]) == 2
    line = error_line(capsys.readouterr().err)
    assert not out.exists()
    return line


TINY = ["train", "node", "--epochs", "1", "--batch-size", "4", "--set", "channels=8", "--set", "groups=4"]


def test_cli_refuses_a_tiny_step_and_a_constant_dataset_in_one_line(tmp_path: Path, capsys) -> None:
    line = _refused([*TINY, "--limit", "8", "--method", "euler", "--set", 'options={"step_size":1e-12}'], capsys,
                    tmp_path / "a")
    assert "options.step_size=1e-12 is not allowed" in line
    const = _save(tmp_path, "const.npz", x_train=np.full((8, 4, 4, 3), 9, np.uint8))
    assert "channel 0 has zero variance" in _refused([*TINY, "--data", str(const)], capsys, tmp_path / "b")
    liar = _forged(tmp_path, "y_test", (10**12,))
    assert "y_test claims shape (1000000000000,) int64" in _refused([*TINY, "--data", str(liar)], capsys,
                                                                     tmp_path / "c")
