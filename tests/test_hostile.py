"""Property: hostile or careless input (output paths, files on disk, sizes, types, concurrent starts) ends in
exit code 2 with one stderr line (or a typed error from Python), no traceback, no file changed, no process left.

Counts and the command that prints them: docs/robustness.md ("Hostile input").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launch import error_line, subprocess_env
from timeaware.cli import main
from timeaware.io import load_tensors
from timeaware.metadata import check_diffusers_config
from timeaware.training import MetricsLog, claim_run_folder


def cases(n: int) -> settings:
    """``n`` generated cases, no per-case deadline (the machine is shared), fixtures reused across cases."""
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

TINY_DDPM = ["--set", "channels=8", "--set", "groups=4", "--set", "data_limit=16", "--batch-size", "8"]
TINY_NODE = ["--set", "channels=8", "--set", "groups=4", "--limit", "16", "--set", "test_limit=8", "--batch-size",
             "8", "--epochs", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny trained DDPM run that the tests read and must never change."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert main(["train", "ddpm", *TINY_DDPM, "--steps", "1", "--out", str(out)]) == 0
    return out


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and link under ``roots``: its kind and content hash (a changed byte or a new file shows)."""
    seen = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.exists() else []:
            if path.is_symlink():
                seen[str(path)] = "link:" + os.readlink(path)
            elif path.is_file():
                seen[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
            elif path.is_dir():
                seen[str(path)] = "dir"
            else:
                seen[str(path)] = "special"
    return seen


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *roots: Path) -> str:
    """Run the command in-process; it must exit 2 with one error line and change nothing under ``roots``."""
    before = snapshot(*roots)
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    line = error_line(err)
    assert snapshot(*roots) == before, argv
    return line


# --- output paths -----------------------------------------------------------------------------------------------

# command -> (argv before the path, argv after it, kind of path it writes)
WRITERS = {
    "sample": (["sample", "RUN", "--num", "2", "--steps", "1", "--out"], [], "folder"),
    "evaluate": (["evaluate", "RUN", "--num", "2", "--steps", "1", "--out"], [], "file"),
    "fix": (["fix", "RUN", "--groups", "1", "--out"], [], "folder"),
    "audit": (["audit", "node-func", "--plot"], [], "file"),
    "reproduce": (["reproduce", "node-norm", "--out"], [], "folder"),
    "train-node": (["train", "node", *TINY_NODE, "--out"], [], "folder"),
    "train-ddpm": (["train", "ddpm", *TINY_DDPM, "--steps", "1", "--out"], [], "folder"),
}
HOSTILE = ["fifo", "device", "wrong-kind", "dangling", "under-a-file", "in-run", "in-checkpoint", "link-into-run",
           "long-name", "symlink-loop"]


def hostile_path(kind: str, target: str, base: Path, run: Path, draw) -> str:
    """Make the hostile thing in ``base`` and return the path a command is told to write."""
    name = draw(st.text(alphabet="abcxyz_-.0123", min_size=1, max_size=8).filter(lambda s: s not in {".", ".."}))
    if kind == "fifo":
        os.mkfifo(base / name)
        return str(base / name)
    if kind == "device":
        return draw(st.sampled_from(["/dev/null", "/dev/zero", "/dev/full"]))
    if kind == "wrong-kind":  # a file where a folder is wanted, a folder where a file is
        (base / name).mkdir() if target == "file" else (base / name).write_text("keep me")
        return str(base / name)
    if kind == "dangling":
        (base / name).symlink_to(base / "missing-target")
        return str(base / name)
    if kind == "under-a-file":
        (base / "file").write_text("keep me")
        return str(base / "file" / name)
    step = next((run / "checkpoints").glob("step-*"))
    if kind == "in-run":
        return str(run / draw(st.sampled_from(["", "checkpoints", "checkpoints/new", name])).strip("/"))
    if kind == "in-checkpoint":
        return str(step / draw(st.sampled_from(["", "state.json", "ema.safetensors", name])).strip("/"))
    if kind == "link-into-run":
        (base / "link").symlink_to(run / "checkpoints")
        return str(base / "link" / name)
    if kind == "long-name":
        return str(base / ("n" * draw(st.integers(256, 400))) / name)
    (base / "a").symlink_to(base / "b")
    (base / "b").symlink_to(base / "a")
    return str(base / "a" / name)


@cases(300)
@given(command=st.sampled_from(sorted(WRITERS)), kind=st.sampled_from(HOSTILE), data=st.data())
def test_a_hostile_output_path_is_refused_before_any_work(command, kind, data, run, tmp_path_factory, capsys):
    before, after, target = WRITERS[command]
    base = tmp_path_factory.mktemp("out")
    out = hostile_path(kind, target, base, run, data.draw)
    if command.startswith("train") and out == str(run):
        after = []  # the run's own folder without --resume: refused as a run
    argv = [str(run) if a == "RUN" else a for a in before] + [out, *after]
    line = refused(argv, capsys, base, run)
    assert out[:40] in line or str(run) in line, line


# --- files on disk: state.json, latest, weights -----------------------------------------------------------------

# a value of the wrong type (or, for integers, out of range) for any field the project reads
WRONG = st.one_of(st.text(max_size=5), st.integers(max_value=-1), st.floats(allow_nan=False).filter(
    lambda f: not f.is_integer()), st.lists(st.integers(), max_size=3), st.dictionaries(
    st.text(max_size=3), st.integers(), max_size=2), st.booleans(), st.none())
UNET_INTS = ["image_size", "in_channels", "channels", "num_res_blocks"]


def deep(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def broken_state(draw) -> dict | str:
    """A valid state.json with one field made wrong: a type, a range, nesting, or the whole file."""
    where = draw(st.sampled_from(["step", "state", "unet", "unet-int", "channel_mult", "dropout", "train", "data",
                                  "processes", "deep", "top", "text"]))
    return {"where": where, "value": draw(WRONG), "int": draw(st.sampled_from(UNET_INTS)),
            "bad_int": draw(st.one_of(st.integers(max_value=0), st.integers(min_value=2**21), st.text(max_size=3),
                                      st.just(8.0), st.just([8]), st.booleans())),
            "depth": draw(st.integers(65, 900)), "text": draw(st.binary(max_size=40))}


def apply(case: dict, meta: dict) -> bytes:
    where, value = case["where"], case["value"]
    state = meta["state"]
    if where == "step":
        meta["step"] = value if not isinstance(value, int) or isinstance(value, bool) else -1 - abs(value)
    elif where == "state":
        meta["state"] = value if not isinstance(value, dict) else [value]
    elif where == "unet":
        state["unet"] = value if not isinstance(value, dict) else [value]
    elif where == "unet-int":
        state["unet"][case["int"]] = case["bad_int"]
    elif where == "channel_mult":
        state["unet"]["channel_mult"] = [] if isinstance(value, list) else value if value is not None else [0]
    elif where == "dropout":
        state["unet"]["dropout"] = value if not isinstance(value, float) else abs(value) + 1.0
    elif where == "train":
        state["train"] = {} if isinstance(value, dict) else value
    elif where == "data":
        state["train"]["data"] = value if not isinstance(value, str) else [value]
    elif where == "processes":
        state["processes"] = value if not isinstance(value, int) or isinstance(value, bool) else -abs(value)
    elif where == "deep":
        state["unet"]["time"] = deep(case["depth"])
    elif where == "top":
        return json.dumps(value if not isinstance(value, dict) else [value]).encode()
    else:
        return b"{" + case["text"]
    return json.dumps(meta).encode()


@contextlib.contextmanager
def replaced(path: Path, data: bytes) -> Iterator[None]:
    original = path.read_bytes()
    path.write_bytes(data)
    try:
        yield
    finally:
        path.write_bytes(original)


@cases(100)
@given(case=broken_state(), command=st.sampled_from(["sample", "evaluate"]))
def test_a_malformed_state_json_is_one_line_naming_the_file(case, command, run, tmp_path_factory, capsys):
    state_file = next((run / "checkpoints").glob("step-*")) / "state.json"
    out = tmp_path_factory.mktemp("out") / "o"
    argv = [command, str(run), "--num", "2", "--steps", "1", "--out", str(out)]
    with replaced(state_file, apply(case, json.loads(state_file.read_text()))):
        line = refused(argv, capsys, run, out.parent)
    assert "state.json" in line, line


def safetensors_bytes(header: object, data: bytes = b"\0" * 16, prefix: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if prefix is None else prefix) + raw + data


@st.composite
def broken_safetensors(draw) -> bytes:
    """A one-tensor safetensors file with one part broken: dtype, shape, offsets, header length, bytes."""
    entry = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    kind = draw(st.sampled_from(["dtype", "shape", "offsets", "prefix", "truncated", "garbage", "entry", "metadata"]))
    if kind == "dtype":
        entry["dtype"] = draw(st.text(max_size=6).filter(lambda s: s not in {"F32", "I32", "U32", "F16", "BF16",
                                                                             "F64", "I64", "U64", "I16", "U16",
                                                                             "I8", "U8", "BOOL", "F8_E4M3",
                                                                             "F8_E5M2", "U1", "F6_E2M3"}))
    elif kind == "shape":
        entry["shape"] = draw(st.one_of(st.lists(st.integers(max_value=-1), min_size=1, max_size=3),
                                        st.lists(st.integers(2**40, 2**62), min_size=2, max_size=3),
                                        st.sampled_from([[3, 3], [17], [2, 2, 2], "2x2", None])))
    elif kind == "offsets":
        a, b = draw(st.integers(0, 2**63 - 1)), draw(st.integers(0, 2**63 - 1))
        entry["data_offsets"] = [a, b] if (a, b) != (0, 16) else [16, 0]
    elif kind == "prefix":
        return safetensors_bytes({"w": entry}, prefix=draw(st.one_of(st.integers(0, 7), st.integers(200, 2**64 - 1))))
    elif kind == "truncated":
        return safetensors_bytes({"w": entry}, data=b"\0" * draw(st.integers(0, 15)))
    elif kind == "garbage":
        return draw(st.binary(max_size=64).filter(lambda b: not b[8:].lstrip().startswith(b"{")))
    elif kind == "entry":
        return safetensors_bytes({"w": draw(WRONG)})
    else:
        return safetensors_bytes({"__metadata__": {"k": draw(st.one_of(st.integers(), st.lists(st.integers())))},
                                  "w": entry})
    return safetensors_bytes({"w": entry})


@cases(200)
@given(data=broken_safetensors())
def test_a_fuzzed_safetensors_file_is_a_value_error_naming_it(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupted or truncated"):
        load_tensors(path)


@cases(40)
@given(data=broken_safetensors(), command=st.sampled_from(["sample", "sample --raw", "fix"]))
def test_a_fuzzed_weights_file_in_a_run_is_one_line(data, command, run, tmp_path_factory, capsys):
    file = "model.safetensors" if command.endswith("--raw") else "ema.safetensors"  # the file each one reads
    weights = next((run / "checkpoints").glob("step-*")) / file
    out = tmp_path_factory.mktemp("out") / "o"
    argv = (["fix", str(run), "--groups", "1", "--out", str(out)] if command == "fix" else
            [*command.split(), str(run), "--num", "2", "--steps", "1", "--out", str(out)])
    with replaced(weights, data):
        line = refused(argv, capsys, run, out.parent)
    assert file in line, line


@cases(60)
@given(pointer=st.one_of(st.sampled_from(["../../etc", "/etc", "step-1", "step-99999999", "step-00000001/../..",
                                          "step-0000000x", ""]), st.binary(max_size=80).map(lambda b: b.decode(
                                              "latin-1")).filter(lambda s: s.strip() != "step-00000001")),
       outside=st.booleans())
def test_a_latest_pointer_may_not_leave_its_run(pointer, outside, run, tmp_path_factory, capsys):
    """A pointer naming anything but a complete step-N folder of its own run, or a step folder that is a link
    to another run's, is refused."""
    out = tmp_path_factory.mktemp("out")
    latest = run / "checkpoints" / "latest"
    step = next((run / "checkpoints").glob("step-*"))
    with contextlib.ExitStack() as stack:
        if outside:  # a step folder that is a symlink to somewhere else
            elsewhere = out / "elsewhere"
            shutil.copytree(step, elsewhere)
            (run / "checkpoints" / "step-00000009").symlink_to(elsewhere)
            stack.callback((run / "checkpoints" / "step-00000009").unlink)
            pointer = "step-00000009"
        stack.enter_context(replaced(latest, pointer.encode("utf-8", errors="replace")))
        line = refused(["sample", str(run), "--num", "2", "--steps", "1", "--out", str(out / "o")], capsys, run)
    assert "latest" in line, line


# --- other metadata: metrics.jsonl, classifier files, diffusers configs -----------------------------------------

@cases(100)
@given(record=st.one_of(st.fixed_dictionaries({"step": WRONG.filter(lambda v: not (isinstance(v, int) and
                                                                                    not isinstance(v, bool)))}),
                        st.fixed_dictionaries({"step": st.integers(max_value=-1)}),
                        st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=5).map(json.dumps)))
def test_a_metrics_line_of_the_wrong_shape_is_a_value_error_naming_file_and_line(record, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n' + json.dumps(record) + "\n")
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: field"):
        MetricsLog(path).truncate_after("step", 1)
    assert path.read_bytes() == before


@pytest.fixture(scope="module")
def digits():
    from timeaware.data import load_images

    return load_images("digits", "test", 8)


@cases(100)
@given(field=st.sampled_from(["config", "data", "image_shape", "test_accuracy", "in_channels", "width",
                              "num_classes", "extra", "missing"]), value=WRONG)
def test_a_classifier_file_with_wrong_keys_or_types_is_refused_before_use(field, value, digits, tmp_path_factory):
    from timeaware.diffusion.metrics import classifier_for

    folder = tmp_path_factory.mktemp("clf")
    info = {"config": {"in_channels": 1, "num_classes": 10, "width": 32}, "data": "digits", "image_shape": [1, 8, 8],
            "test_accuracy": 0.9}
    if field in ("in_channels", "width", "num_classes"):
        info["config"][field] = value if not isinstance(value, int) or isinstance(value, bool) else -abs(value)
    elif field == "extra":
        info["config"]["depth"] = 3
    elif field == "missing":
        del info["test_accuracy"]
    elif field == "test_accuracy":
        info[field] = value if not isinstance(value, int | float) or isinstance(value, bool) else 2.0 + abs(value)
    elif field == "image_shape":
        info[field] = [*value, -1] if isinstance(value, list) else value
    else:
        info[field] = value if field != "data" or not isinstance(value, str) else [value]
    (folder / "c.json").write_text(json.dumps(info))
    (folder / "c.safetensors").write_bytes(b"")
    before = snapshot(folder)
    with pytest.raises(ValueError, match=r"c\.json: field"):
        classifier_for(folder / "c.safetensors", digits, digits)  # would train a classifier if it passed
    assert snapshot(folder) == before


DIFFUSERS = {"_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 3, "out_channels": 3,
             "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
             "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}


@cases(150)
@given(field=st.sampled_from(sorted(DIFFUSERS)), value=WRONG, huge=st.integers(10**6, 10**9),
       size=st.sampled_from(["block_out_channels", "layers_per_block", "sample_size", "none"]))
def test_a_diffusers_config_with_wrong_types_or_sizes_is_refused_fast(field, value, huge, size):
    config = dict(DIFFUSERS)
    if size == "none":  # a wrong type: anything of another JSON type than the field's
        same_kind = ((isinstance(value, type(DIFFUSERS[field]))
                      or (field in ("sample_size", "layers_per_block") and isinstance(value, list)))
                     and not isinstance(value, bool))  # sample_size may also be [H, W], layers_per_block one per level
        config[field] = {"not": "this"} if same_kind or value is None else value
    else:  # a size no machine holds
        config[size] = [huge] if size == "block_out_channels" else huge
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"config\.json: "):
        check_diffusers_config(config, "x/config.json")
    assert time.perf_counter() - start < 0.5


# --- sizes --------------------------------------------------------------------------------------------------------

@cases(40)
@given(case=st.one_of(
    st.tuples(st.just("ddpm"), st.sampled_from(["channels", "num_res_blocks", "image_size", "batch"]),
              st.integers(10**5, 10**9)),
    st.tuples(st.just("node"), st.sampled_from(["channels", "batch"]), st.integers(10**6, 10**9)),
    st.tuples(st.sampled_from(["sample", "evaluate"]), st.just("num"), st.integers(10**10, 10**13))))
def test_a_size_no_machine_holds_is_refused_in_well_under_a_second(case, run, tmp_path_factory, capsys):
    what, field, n = case
    out = tmp_path_factory.mktemp("out") / "o"
    if what == "ddpm":
        value = {"channels": f"channels={n * 32}", "num_res_blocks": f"num_res_blocks={n}",
                 "image_size": f"image_size={2 ** 20}", "batch": "channels=32"}[field]
        argv = ["train", "ddpm", "--set", value, "--steps", "1", "--out", str(out)]
        argv += ["--batch-size", str(n * 1000)] if field == "batch" else []
    elif what == "node":
        argv = ["train", "node", "--out", str(out)] + (["--set", f"channels={n * 32}"] if field == "channels" else
                                                        ["--batch-size", str(n * 1000), "--limit", "16"])
    else:
        argv = [what, str(run), "--num", str(n), "--out", str(out)]
    start = time.perf_counter()
    line = refused(argv, capsys, run, out.parent)
    assert time.perf_counter() - start < 1.0, line
    assert "no-memory-check" in line or "is not allowed; it must be an integer from 1 to 65536" in line, line


def test_no_memory_check_lets_a_job_past_the_estimate(run, tmp_path, capsys, monkeypatch):
    """The override does what it says: an estimate above the free memory passes with it, fails without."""
    import timeaware.resources as resources

    monkeypatch.setattr(resources, "available_memory", lambda: 1)  # no machine has room now
    argv = ["sample", str(run), "--num", "2", "--steps", "1", "--out", str(tmp_path / "s")]
    assert "needs about" in refused(argv, capsys, run, tmp_path)
    assert main([*argv, "--no-memory-check"]) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["00000.png", "00001.png", "grid.png"]


def test_the_unet_estimate_is_within_a_factor_of_two_of_the_real_count():
    from timeaware.diffusion.train import PRESETS
    from timeaware.diffusion.unet import UNet

    for cfg in (PRESETS["paper"][0], PRESETS["quick"][0], PRESETS["quick"][0].replace(num_res_blocks=3)):
        with torch.device("meta"):
            real = sum(p.numel() for p in UNet(cfg).parameters())
        assert 0.5 < cfg.size()[0] / real < 2.0, (cfg, cfg.size()[0], real)


# --- types, dtypes, devices in the Python API ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def unet(run):
    from timeaware.diffusion.sampling import load_unet

    return load_unet(run, device="cpu")[0]


@cases(100)
@given(arg=st.sampled_from(["num", "steps", "batch_size", "seed", "sampler", "model", "dtype"]),
       value=st.one_of(WRONG, st.sampled_from([torch.float16, torch.bfloat16, "cpu", torch.nn.Linear(2, 2)])))
def test_sampling_with_wrong_types_or_dtypes_raises_a_typed_error_before_drawing(arg, value, unet):
    from timeaware.diffusion.sampling import sample

    kwargs: dict = {"num": 2, "steps": 1, "batch_size": 2, "seed": 0, "sampler": "ddim"}
    model = unet
    if arg == "model":
        model = value
    elif arg == "dtype":
        model = unet.to(value if isinstance(value, torch.dtype) else torch.float16)
    elif arg != "sampler" or not isinstance(value, str):
        kwargs[arg] = value if not (isinstance(value, int) and not isinstance(value, bool)) else -abs(value) - 1
    else:
        kwargs[arg] = value + "-no-such-sampler"
    try:
        with pytest.raises((TypeError, ValueError)) as err:
            sample(model, kwargs.pop("num"), **kwargs)
    finally:
        unet.float()
    assert err.type in (TypeError, ValueError) and str(err.value).count("\n") == 0


def test_a_float64_model_samples_and_a_bad_device_is_refused(run, unet):
    from timeaware.diffusion.sampling import load_unet, sample

    assert sample(unet.double(), 2, steps=1).dtype == torch.float64
    unet.float()
    for device, error in (("cpux", ValueError), (7, TypeError)):
        with pytest.raises(error, match="device"):
            load_unet(run, device=device)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            load_unet(run, device="cuda:0")


@pytest.mark.parametrize("call", [
    lambda t: __import__("timeaware.diffusion.train", fromlist=["train"]).train(123, *t.PRESETS["quick"]),
    lambda t: __import__("timeaware.diffusion.train", fromlist=["train"]).train("o", {}, t.PRESETS["quick"][1]),
    lambda t: __import__("timeaware.diffusion.train", fromlist=["train"]).train("o", t.PRESETS["quick"][0], None),
    lambda t: __import__("timeaware.node.train", fromlist=["x"]).train_classifier({"epochs": 1}, "o"),
    lambda t: __import__("timeaware.node.train", fromlist=["x"]).train_classifier(
        __import__("timeaware.node", fromlist=["preset"]).preset("quick"), "o", resume=3),
])
def test_training_entry_points_name_a_wrong_argument_type(call, tmp_path, monkeypatch):
    import timeaware.diffusion.train as ddpm_train

    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=r"must be .*, not "):
        call(ddpm_train)
    assert list(tmp_path.iterdir()) == []


# --- concurrent starts ----------------------------------------------------------------------------------------------

@cases(50)
@given(command=st.sampled_from(["node", "ddpm"]), resume=st.sampled_from([[], ["--resume"], ["--resume", "latest"]]),
       nested=st.booleans())
def test_a_second_start_on_a_locked_run_folder_is_refused(command, resume, nested, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("lock") / ("a/b" if nested else "run")
    argv = ["train", command, *(TINY_NODE if command == "node" else [*TINY_DDPM, "--steps", "1"]), "--out", str(out),
            *resume]
    with claim_run_folder(out, resume=bool(resume)):
        line = refused(argv, capsys, out.parent)
    assert "is in use by another timeaware process" in line and f"pid {os.getpid()}" in line, line


HOLD = ("import sys, time; from timeaware.training import claim_run_folder\n"
        "with claim_run_folder(sys.argv[1], resume=True):\n    print('held', flush=True); time.sleep(600)")


def test_a_lock_dies_with_its_process(tmp_path, capsys):
    """SIGKILL the holder: the OS drops the lock, and --resume (here: claiming the folder) works at once."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env=subprocess_env(), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = refused(["train", "node", *TINY_NODE, "--out", str(out), "--resume"], capsys, tmp_path)
        assert f"pid {holder.pid}" in line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with claim_run_folder(out, resume=True) as found:
        assert found is None


@pytest.mark.slow  # two trainings' start-up: ~10 s on an idle 2-core machine, 30 s on a busy one
def test_two_trainings_started_together_on_one_folder(tmp_path):
    """Two processes, same --out, started at once: one trains, the other stops with one line; none is left."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "timeaware", "train", "node", *TINY_NODE, "--out", str(out)]
    procs = [subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=240), p.communicate()[1]) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    line = error_line(next(err for code, err in results if code == 2))
    assert "in use by another timeaware process" in line or "already holds a run" in line, line
    assert all(p.poll() is not None for p in procs)
    assert [json.loads(r)["epoch"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_a_run_whose_latest_pointer_is_gone_is_still_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "node", *TINY_NODE, "--out", str(out)]) == 0
    (out / "checkpoints" / "latest").unlink()
    capsys.readouterr()
    line = refused(["train", "node", *TINY_NODE, "--out", str(out)], capsys, out)
    assert "already holds a run; pass --resume" in line
    with claim_run_folder(out, resume=True) as found:  # --resume continues the newest complete checkpoint
        assert found is not None and found.name == "step-00000001"


# --- full and read-only file systems (a small tmpfs; root only) --------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Path]:
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave: int) -> None:
    """Take all but ``leave`` bytes of the file system holding ``folder``."""
    fs = os.statvfs(folder)
    with open(folder / "filler", "wb") as fh:
        fh.truncate(0)
        fh.write(b"\0" * max(0, fs.f_bavail * fs.f_frsize - leave))


def test_a_full_disk_is_refused_before_work_and_midway_keeps_the_last_checkpoint(tmpfs, capsys):
    out = tmpfs / "run"
    base = ["train", "ddpm", "--set", "channels=16", "--set", "groups=4", "--set", "data_limit=16", "--batch-size", "8",
            "--out", str(out)]
    assert main([*base, "--steps", "1"]) == 0
    step1 = snapshot(out / "checkpoints")
    fill(tmpfs, leave=512 << 10)  # less than the 1 MiB every writer needs: refused before it starts
    assert "MiB free" in refused([*base, "--steps", "2", "--resume"], capsys, tmpfs)
    (tmpfs / "filler").unlink()
    fill(tmpfs, leave=(1 << 20) + (256 << 10))  # passes the check, but the next checkpoint does not fit
    assert main([*base, "--steps", "2", "--resume"]) == 2
    line = error_line(capsys.readouterr().err)
    assert "No space left on device (ENOSPC)" in line, line
    assert snapshot(out / "checkpoints") == step1  # no partial folder, latest still step 1, its files intact


def test_a_read_only_file_system_is_one_line(tmpfs, run, capsys):
    (tmpfs / "kept").write_text("x")
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    line = refused(["sample", str(run), "--num", "2", "--steps", "1", "--out", str(tmpfs / "s")], capsys, tmpfs, run)
    assert "Read-only file system (EROFS)" in line, line


@pytest.mark.parametrize(("edit", "field"), [
    (lambda c: c.update(bogus=1), "config: unknown run setting 'bogus'"),
    (lambda c: c["solver"].update(tolerance=1), "config: SolverOptions"),
    (lambda c: c.update(lr=10**400), "state.config.lr: an integer of 401 digits"),
    (lambda c: c.update(lr=1e308), "config: lr=1e+308 is not allowed"),
])
def test_a_node_run_config_that_names_unknown_or_huge_settings_is_one_line_naming_state_json(tmp_path, capsys, edit,
                                                                                              field):
    """An unknown key was 'NodeRunConfig.__init__() got an unexpected keyword argument' with no file named, and
    lr = 10**400 an OverflowError traceback, in audit, time-use and fix alike."""
    out = tmp_path / "run"
    assert main(["train", "node", *TINY_NODE, "--out", str(out)]) == 0
    capsys.readouterr()
    state_file = next(out.glob("checkpoints/step-*/state.json"))
    state = json.loads(state_file.read_text())
    edit(state["state"]["config"])
    state_file.write_text(json.dumps(state))
    for argv in (["audit", str(out)], ["time-use", str(out), "--out", str(tmp_path / "tu")]):
        line = refused(argv, capsys, out)
        assert "state.json: " in line and f"field {field}" in line, line


def test_a_ddpm_state_with_an_unknown_unet_field_is_one_line_naming_state_json(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    state_file = next(copy.glob("checkpoints/step-*/state.json"))
    state = json.loads(state_file.read_text())
    state["state"]["unet"]["bogus"] = 1
    state_file.write_text(json.dumps(state))
    line = refused(["sample", str(copy), "--num", "1", "--steps", "1", "--out", str(tmp_path / "o")], capsys, copy)
    assert "state.json" in line and "unet" in line and "bogus" in line, line
