"""Metadata read from disk, checked for types and ranges before use: one loader, one error naming file and field.

A ``state.json`` with a string epoch, a list where a config belongs or a negative step, a classifier file
with other keys, a ``metrics.jsonl`` line of the wrong shape, a diffusers config whose sizes are not
positive integers: each gives ``FILE: field a.b: <what is wrong>`` instead of failing deep inside
training, sampling or model construction. The schemas are JSON Schema (checked by ``jsonschema``), with
``integer`` meaning a JSON integer (not 1.0, not true).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

from .io import find_value, loads, read_json
from .resources import FLOAT, check_memory, unet_size
from .validate import INT64_MAX, MAX_MAP, MAX_WIDTH

_INT = {"type": "integer"}
_POS = {"type": "integer", "minimum": 1}
_NONNEG = {"type": "integer", "minimum": 0}
_NUMBER = {"type": "number"}
_SIZE = {"type": "integer", "minimum": 1, "maximum": 1 << 20}  # a width, an image side, a count of blocks

UNET_CONFIG = {
    "type": "object",
    "properties": {"image_size": _SIZE, "in_channels": _SIZE, "channels": _SIZE, "num_res_blocks": _SIZE,
                   "channel_mult": {"type": "array", "items": _SIZE, "minItems": 1, "maxItems": 16},
                   "attn_resolutions": {"type": "array", "items": _POS},
                   "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                   "time": {"type": "object"}},
}
CHECKPOINT_STATE = {
    "type": "object",
    "required": ["step", "state"],
    "properties": {
        "step": _NONNEG,
        "modules": {"type": "array", "items": {"type": "string"}},
        "optimizer": {"type": "object", "required": ["param_groups", "plain"],
                      "properties": {"param_groups": {"type": "array", "items": {"type": "object"}},
                                     "plain": {"type": "object"}}},
        "scheduler": {"type": "object"},
        "rng": {"type": "object", "required": ["numpy", "python"],
                "properties": {  # numpy's MT19937 (kind, pos, has_gauss, cached) and Python's (version, words, gauss)
                    "numpy": {"type": "array", "prefixItems": [{"const": "MT19937"},
                                                               {"type": "integer", "minimum": 0, "maximum": 624},
                                                               {"enum": [0, 1]}, {"type": "number"}],
                              "minItems": 4, "maxItems": 4},
                    "python": {"type": "array", "prefixItems": [
                        {"type": "integer", "minimum": 1, "maximum": 3},
                        {"type": "array", "minItems": 625, "maxItems": 625,
                         "items": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}},
                        {"type": ["null", "number"]}], "minItems": 3, "maxItems": 3}}},
        "state": {
            "type": "object",
            "properties": {
                # NODE runs
                "epoch": _NONNEG,
                "best": _NUMBER,
                "config": {"type": "object"},
                "metrics": {"type": "object", "properties": {"best_test_acc": {"type": "number", "minimum": 0},
                                                             "wall_time": {"type": "number", "minimum": 0}}},
                "input_shape": {"type": "array", "items": _SIZE, "minItems": 3, "maxItems": 3},
                "num_classes": _SIZE,
                # DDPM runs
                "unet": UNET_CONFIG,
                "train": {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}},
                "schedule": {"type": "object"},
                "processes": _POS,
                "loss": {"type": ["number", "null"]},
            },
        },
    },
}
METRICS_RECORD = {"type": "object", "properties": {"epoch": _NONNEG, "step": _NONNEG}}
CLASSIFIER_INFO = {
    "type": "object",
    "required": ["config", "data", "image_shape", "test_accuracy"],
    "properties": {
        "config": {"type": "object", "required": ["in_channels", "num_classes", "width"],
                   "additionalProperties": False,
                   "properties": {"in_channels": {**_POS, "maximum": 64},
                                  "width": {**_POS, "maximum": 4096, "multipleOf": 8},
                                  "num_classes": {**_POS, "maximum": 100_000}}},
        "data": {"type": "string"},
        "image_shape": {"type": "array", "items": _SIZE, "minItems": 3, "maxItems": 3},
        "test_accuracy": {"type": "number", "minimum": 0, "maximum": 1},
    },
}
_MAYBE_NUMBER = {"type": ["number", "null"], "minimum": -1e300, "maximum": 1e300}  # a mean of such cannot overflow
SWEEP_FILE = {"type": "object", "required": ["cells"],
              "properties": {"cells": {"type": "array", "items": {"type": "string"}}}}
# the numbers the experiments record and their tables average (node, needs_time, ddpm, ddpm_time)
METRIC_FIELDS = ("test_acc", "frozen_acc", "nfe_forward", "nfe_backward", "interior_survival_mean", "time_share_pct",
                 "wall_time", "loss", "fd_classifier", "fid", "is", "train_s", "eval_s", "unexplained", "fit_error",
                 "frozen", "endpoint", "nfe", "survival", "loss_true", "loss_random", "loss_shifted",
                 "random_over_true")
CELL_RECORD = {  # a sweep cell's result: the fields the tables and plots read
    "type": "object",
    "required": ["key"],
    "properties": {
        "key": {"type": "string"}, "error": {"type": "string"}, "preset": {"type": "string"},
        "data": {"type": "string"}, "setting": {"type": "string"}, "seed": _NONNEG,
        "config": {"type": "object", "properties": {"channels": _POS, "model": {
            "type": "object", "properties": {"groups": _POS}}}},
        **{name: _MAYBE_NUMBER for name in METRIC_FIELDS},
        "time_use": {"type": "array", "items": {"type": "object", "additionalProperties": _MAYBE_NUMBER}},
        "scores": {"type": "array", "items": {"type": "object", "required": ["metric", "value", "protocol"],
                                              "properties": {"metric": {"type": "string"}, "value": _MAYBE_NUMBER,
                                                             "protocol": {"type": "object"}}}},
    },
}
_TIME = {"type": "number", "minimum": -(2**53), "maximum": 2**53}  # exact in float64 (NaN: TimeDomain refuses it)
_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": MAX_MAP}, "maxItems": 8}
MODEL_CALL = {  # calling.ModelCall.to_dict(): types and sizes here, the allowed names in ModelCall itself
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "convention": {"type": "string"}, "mode": {"type": "string"}, "scalar_time": {"type": "boolean"},
        "float_steps": {"type": "boolean"},
        "time_arg": {"type": ["string", "null"], "maxLength": 200},
        "domain": {"type": "object", "additionalProperties": False,
                   "properties": {"kind": {"type": "string"}, "low": _TIME, "high": _TIME}},
        "input_shape": {"anyOf": [{"type": "null"}, {**_SHAPE, "minItems": 1}]},
        "extras": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": False,
            "properties": {"shape": _SHAPE, "kind": {"type": "string"},
                           "high": {"type": "integer", "minimum": 0, "maximum": INT64_MAX},
                           "shared": {"type": "boolean"}}}},
        "embedding_dim": {"anyOf": [{"type": "null"}, {**_POS, "maximum": MAX_WIDTH}]},
        "concat_dim": {"type": "integer", "minimum": -8, "maximum": 8},
    },
}
FIX_RECIPE = {  # repair's fix.json: "base" is checked by specs.build_base, "fix" by repair.persist
    "type": "object",
    "required": ["base", "call", "fix"],
    "additionalProperties": False,
    "properties": {"base": {}, "call": MODEL_CALL, "fix": {}},
}
RUNNING_MARK = {"type": "object", "properties": {"where": {"type": "string"}, "host": {"type": "string"},
                                                 "pid": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                                                 "since": {"type": "string"}}}
_OPTIONAL_SIZE = {"anyOf": [{"type": "null"}, _SIZE]}
_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
_INT_OR_INTS = {"anyOf": [_SIZE, {"type": "array", "items": _SIZE, "minItems": 1}]}
_OPTIONAL_INT_OR_INTS = {"anyOf": [{"type": "null"}, _INT_OR_INTS]}
DIFFUSERS_CONFIG = {
    "type": "object",
    "required": ["_class_name"],
    "properties": {
        "_class_name": {"type": "string"},
        "sample_size": {"anyOf": [{"type": "null"}, _SIZE, {"type": "array", "items": _SIZE, "minItems": 1,
                                                              "maxItems": 3}]},
        "in_channels": _OPTIONAL_SIZE, "out_channels": _OPTIONAL_SIZE,  # null: as many as in (Flux, Lumina, Mochi)
        "block_out_channels": {"anyOf": [_SIZE, {"type": "array", "items": _SIZE, "minItems": 1, "maxItems": 16}]},
        "layers_per_block": _INT_OR_INTS,
        "norm_num_groups": _OPTIONAL_SIZE,
        "attention_head_dim": _OPTIONAL_INT_OR_INTS,
        "cross_attention_dim": _OPTIONAL_INT_OR_INTS,
        "down_block_types": {"type": "array", "items": {"type": "string"}},
        "up_block_types": {"type": "array", "items": {"type": "string"}},
        "act_fn": {"type": ["string", "null"]},
        "flip_sin_to_cos": {"type": "boolean"},
        "freq_shift": _NUMBER,
        "dropout": {"anyOf": [_PROBABILITY, {"type": "array", "items": _PROBABILITY}]},  # per block: StableCascade
    },
}


def check(value: Any, schema: dict[str, Any], source: str | Path) -> Any:
    """``value`` when it fits ``schema``, else a one-line ``ValueError`` naming ``source`` and the field."""
    error = _best_error(value, schema)
    if error is None:
        return value
    field = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    raise ValueError(f"{source}: field {field}: {message}")


def read_checked(path: str | Path, schema: dict[str, Any]) -> Any:
    """A JSON file, checked against ``schema``."""
    return check(read_json(path), schema, path)


def parse_record(line: str, schema: dict[str, Any], source: str) -> Any:
    """One JSONL line checked against ``schema``; None for a torn line (a crash mid-append), which readers skip."""
    try:
        value = loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    except ValueError as err:  # a whole line, with a number no reader can use
        raise ValueError(f"{source}: {err}") from None
    return check(value, schema, source)


def check_diffusers_config(config: Any, source: str | Path) -> dict[str, Any]:
    """A diffusers ``config.json``'s common fields checked for types and ranges, and the model it describes
    (built, and run on one sample) checked to fit in memory: ``block_out_channels`` [1000000] needs terabytes."""
    check(config, DIFFUSERS_CONFIG, source)
    bad = find_value(config, lambda v: isinstance(v, float) and not math.isfinite(v))
    if bad is not None:  # JSON's NaN/Infinity, anywhere: a dropout of NaN passes every range, fails in the first call
        raise ValueError(f"{source}: field {bad[0]}: {bad[1]} is not allowed; give a finite number")
    widths = config.get("block_out_channels")
    if isinstance(widths, list) and widths:
        blocks = config.get("layers_per_block", 2)
        size = config.get("sample_size") or 64
        one_d = "1D" in str(config.get("_class_name")) or any(
            str(kind).endswith("1D") for kind in config.get("down_block_types") or ())
        params, activations = unet_size(widths, max(blocks) if isinstance(blocks, list) else blocks,
                                        max(size) if isinstance(size, list) else size, config.get("in_channels") or 3,
                                        spatial_dims=1 if one_d else 2)
        check_memory(params * FLOAT + activations, f"{source}: a model of about {params:,} parameters run on one "
                     "sample")
    return config


def _best_error(value: Any, schema: dict[str, Any]) -> Any:
    from jsonschema.exceptions import best_match  # type: ignore[import-untyped]

    return best_match(_validator_class()(schema).iter_errors(value))


@functools.cache
def _validator_class() -> Any:
    """JSON Schema 2020-12 where ``integer`` is a JSON integer only (1.0 would pass the standard check)."""
    from jsonschema import Draft202012Validator, validators  # type: ignore[import-untyped]

    checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
    return validators.extend(Draft202012Validator, type_checker=checker)
