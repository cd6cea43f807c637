import re

import pytest

from timeaware import TimeAware, make_norm


def test_defaults_are_the_papers_baseline():
    cfg = TimeAware()
    assert (cfg.norm, cfg.groups, cfg.positional, cfg.injection) == ("group", 32, "none", "add")


def test_replace_changes_one_field_and_is_frozen():
    cfg = TimeAware().replace(groups=1)
    assert cfg.groups == 1 and cfg.norm == "group"
    with pytest.raises(AttributeError):
        cfg.groups = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"norm": "weight"}, "norm='weight' is not allowed; choose one of batch, instance, group, layer, none"),
        ({"groups": 0}, "groups=0 is not allowed; it must be an integer >= 1"),
        ({"groups": 2.5}, "groups=2.5 is not allowed"),
        ({"positional": "sinusoid"}, "positional='sinusoid' is not allowed"),
        ({"operand_bias": "one"}, "operand_bias='one' is not allowed"),
        ({"time_bias": None}, "time_bias=None is not allowed"),
        ({"injection": "film"}, "injection='film' is not allowed; choose one of add, scale_shift"),
        ({"activation": "gelu"}, "activation='gelu' is not allowed"),
        ({"colour": "red"}, "unknown TimeAware field 'colour'"),
    ],
)
def test_bad_values_raise_one_line_errors(changes, message):
    with pytest.raises(ValueError) as err:
        TimeAware().replace(**changes)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_groups_must_divide_channels():
    with pytest.raises(ValueError, match=r"groups=32 does not divide channels=48; allowed groups: 1, 2, 3, 4, 6"):
        make_norm(TimeAware(), 48)


def test_from_strings_parses_cli_pairs():
    cfg = TimeAware.from_strings(["norm=batch", "groups=4"])
    assert cfg == TimeAware(norm="batch", groups=4)
    with pytest.raises(ValueError, match="groups='four' is not allowed"):
        TimeAware.from_strings(["groups=four"])
    with pytest.raises(ValueError, match="not of the form key=value"):
        TimeAware.from_strings(["norm"])


def test_dict_round_trip():
    cfg = TimeAware(norm="instance", positional="mlp", activation="silu")
    assert TimeAware.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(("value", "current", "want"), [
    ("true", False, True), ("0", True, False),             # bool
    ("1,2,2", (1, 2), (1, 2, 2)),                           # tuple of ints
    (".5", 0.1, 0.5), ("1e-3", 0.1, 1e-3),                 # float
    ("7", 3, 7), ("none", 3, None), ("null", True, None),  # int; None for any optional field (checked later)
    ("1e-4", None, 1e-4), ("true", None, True),            # a field now None: JSON
    ('{"max_num_steps": 50}', {}, {"max_num_steps": 50}),  # solver options
    ("x.npz", "digits", "x.npz"),                          # str as given
])
def test_parse_setting_types_a_cli_string_by_the_fields_current_value(value, current, want) -> None:
    from timeaware.config import parse_setting

    assert parse_setting("key", value, current) == want and type(parse_setting("key", value, current)) is type(want)


@pytest.mark.parametrize(("value", "current", "message"), [
    ("maybe", True, "--set key='maybe' is not allowed; expected bool like True"),
    ("a,b", (1, 2), "--set key='a,b' is not allowed; expected comma-separated ints like 1,2"),
    ("a,b", (), "expected comma-separated ints like 1,2"),
    ("fast", 0.1, "expected float like 0.1"),
    ("many", 3, "--set key='many' is not allowed; expected int like 3"),
    ("{oops", None, "expected a number, true, false, none or JSON"),
])
def test_parse_setting_errors_name_the_value_and_what_is_allowed(value, current, message) -> None:
    from timeaware.config import parse_setting

    with pytest.raises(ValueError, match=re.escape(message)) as err:
        parse_setting("key", value, current)
    assert "\n" not in str(err.value)
