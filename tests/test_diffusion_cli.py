"""`timeaware train ddpm | sample | evaluate`: a tiny run end to end, and bad input → one line, exit 2."""

import pytest

from timeaware.cli import main

TINY = ["--set", "channels=8", "--set", "groups=4", "--set", "data_limit=32", "--batch-size", "8"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddpm")
    assert main(["train", "ddpm", *TINY, "--steps", "2", "--out", str(out)]) == 0
    return out


def test_train_sample_round_trip_writes_pngs_and_a_grid(run_dir, tmp_path, capsys):
    assert main(["sample", str(run_dir), "--num", "3", "--steps", "2", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["00000.png", "00001.png", "00002.png", "grid.png"]
    assert "ema weights" in capsys.readouterr().out


def test_same_seed_same_files(run_dir, tmp_path):
    for name in ("a", "b"):
        assert main(["sample", str(run_dir), "--num", "2", "--steps", "2", "--raw", "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "a/grid.png").read_bytes() == (tmp_path / "b/grid.png").read_bytes()


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "ddpm", "--preset", "huge"], "preset 'huge' is unknown; choose one of paper, quick"),
    (["train", "ddpm", "--set", "groups=7"], "groups=7 does not divide channels=32"),
    (["train", "ddpm", "--set", "steps"], "is not of the form key=value"),
    (["sample", "no/such/run", "--out", "x"], "no/such/run: no such checkpoint"),
    (["sample", "RUN", "--sampler", "euler", "--out", "x"], "--sampler 'euler' is not allowed"),
    (["evaluate", "RUN", "--metric", "fid"], "install timeaware[fid] and pass --inception-weights PATH"),
    (["evaluate", "RUN", "--metric", "kid"], "metric 'kid' is unknown; choose from fd-classifier, fid, is"),
])
def test_bad_input_is_one_line_and_exit_2(run_dir, argv, message, capsys):
    argv = [str(run_dir) if a == "RUN" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_evaluate_says_what_it_does_and_trains_the_classifier_once(run_dir, tmp_path, monkeypatch, capsys):
    import timeaware.diffusion.metrics as metrics

    real = metrics.train_feature_classifier
    monkeypatch.setattr(metrics, "train_feature_classifier", lambda *a, **k: real(*a, **{**k, "steps": 3}))  # short
    classifier = tmp_path / "clf.safetensors"
    argv = ["evaluate", str(run_dir), "--num", "4", "--steps", "2", "--classifier", str(classifier)]
    assert main(argv) == 0
    first = capsys.readouterr()
    assert "FD-classifier = " in first.out
    assert f"FD-classifier: no classifier at {classifier} yet; training one on digits" in first.err
    assert "FD-classifier: training on digits" in first.err  # its progress bar
    assert "sampling 4/4 images (ddim-2)" in first.err  # the sampler's progress bar
    assert main(argv) == 0
    again = capsys.readouterr().err
    assert "sampling 4/4 images" in again and "no classifier" not in again  # the saved one is reused
