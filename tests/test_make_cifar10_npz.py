"""scripts/make_cifar10_npz.py: the binary and python CIFAR-10 downloads give the .npz timeaware loads."""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from timeaware.data import load_images

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_cifar10_npz.py"
NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_cifar10_npz", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _batches(n: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per batch file: (N, 3072) channel-major rows and labels, every pixel different."""
    rng = np.random.default_rng(0)
    return {name: (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)) for name in NAMES}


def _expected(batches, names):
    rows = np.concatenate([batches[n][0] for n in names])
    images = np.zeros((len(rows), 32, 32, 3), dtype=np.uint8)
    for i, row in enumerate(rows):  # the documented layout, pixel by pixel: 1,024 red, then green, then blue
        for c in range(3):
            images[i, :, :, c] = row[1024 * c:1024 * (c + 1)].reshape(32, 32)
    return images, np.concatenate([batches[n][1] for n in names])


def _write_binary(folder: Path, batches) -> None:
    folder.mkdir()
    for name, (rows, labels) in batches.items():
        np.concatenate([labels.astype(np.uint8)[:, None], rows], axis=1).tofile(folder / f"{name}.bin")


def _write_python(folder: Path, batches) -> None:
    folder.mkdir()
    for name, (rows, labels) in batches.items():
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": rows,
                 b"filenames": [b"x.png"] * len(labels)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


@pytest.mark.parametrize(("layout", "write"), [("cifar-10-batches-bin", _write_binary),
                                               ("cifar-10-batches-py", _write_python)])
def test_both_downloads_give_the_same_loadable_npz(script, tmp_path, layout, write):
    batches = _batches()
    write(tmp_path / layout, batches)
    out = tmp_path / "cifar10.npz"
    assert script.main([str(tmp_path), str(out)]) == 0  # the folder holding cifar-10-batches-*
    with np.load(out, allow_pickle=False) as d:
        x_train, y_train = _expected(batches, NAMES[:5])
        np.testing.assert_array_equal(d["x_train"], x_train)
        np.testing.assert_array_equal(d["y_train"], y_train)
        np.testing.assert_array_equal(d["x_test"], _expected(batches, NAMES[5:])[0])
        assert list(d["class_names"])[:2] == ["airplane", "automobile"]
    test = load_images(str(out), "test")
    assert test.x.shape == (3, 3, 32, 32) and test.y.tolist() == batches["test_batch"][1].tolist()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


class _Shell:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_with_code_is_refused_not_run(script, tmp_path, capsys):
    _write_python(tmp_path / "py", _batches(1))
    (tmp_path / "py" / "data_batch_3").write_bytes(pickle.dumps({b"data": _Shell(), b"labels": [0]}, protocol=2))
    assert script.main([str(tmp_path / "py"), str(tmp_path / "c.npz")]) == 2
    captured = capsys.readouterr()
    assert "refusing to unpickle posix.system" in captured.err and "pwned" not in captured.out
    assert not (tmp_path / "c.npz").exists()


def test_missing_or_torn_batches_are_one_line_errors(script, tmp_path, capsys):
    assert script.main([str(tmp_path), str(tmp_path / "c.npz")]) == 2
    assert "no CIFAR-10 batches" in capsys.readouterr().err
    _write_binary(tmp_path / "bin", _batches(2))
    with open(tmp_path / "bin" / "test_batch.bin", "ab") as fh:
        fh.write(b"\0")
    assert script.main([str(tmp_path / "bin"), str(tmp_path / "c.npz")]) == 2
    assert "is not a whole number of 3073-byte records" in capsys.readouterr().err
