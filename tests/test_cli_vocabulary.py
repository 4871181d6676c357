"""One vocabulary across commands: the same option for the same thing, and two kinds of exit-2 messages."""

from __future__ import annotations

import click
import pytest

from geoclf.cli import cli, main


def command(*names: str) -> click.Command:
    with click.Context(cli) as ctx:
        found = cli.get_command(ctx, names[0])
    for name in names[1:]:
        found = found.commands[name]
    return found


def options(*names: str) -> set[str]:
    return {opt for param in command(*names).params for opt in getattr(param, "opts", [])}


@pytest.mark.parametrize("names", [("tile",), ("featurize",), ("score",), ("sweep",), ("trend",)])
def test_every_parallel_command_takes_scheduler(names):
    assert "--scheduler" in options(*names)


@pytest.mark.parametrize("names", [("featurize",), ("train",), ("finetune",), ("sweep",), ("score",), ("report",),
                                   ("runs", "list"), ("runs", "show"), ("models", "register"), ("models", "list"),
                                   ("models", "show"), ("models", "promote")])
def test_every_command_recording_or_reading_runs_takes_runs_dir(names):
    assert "--runs-dir" in options(*names)


@pytest.mark.parametrize("names", [("runs", "list"), ("runs", "show"), ("models", "list"), ("models", "show"),
                                   ("naip", "search")])
def test_every_command_printing_a_table_takes_json(names):
    assert "--json" in options(*names)


def test_usage_errors_and_bad_data_exit_2_with_their_own_words(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["models", "register", "best", "--run", "x", "--name", "y"])  # what the README once showed
    usage = capsys.readouterr().err
    assert exited.value.code == 2 and usage.startswith("Usage: geoclf models register") and "'best'" in usage
    with pytest.raises(SystemExit) as exited:
        main(["train", "--features", str(tmp_path)])  # a directory that holds no features: bad data
    data = capsys.readouterr().err
    assert exited.value.code == 2 and data.startswith("geoclf: error: ") and "Usage:" not in data
    assert len(data.strip().splitlines()) == 1


@pytest.mark.parametrize("names", [("score",), ("map",), ("change",), ("trend",)])
def test_smooth_is_one_kind_of_option_everywhere(names):
    """``--smooth N`` (an odd window, 1 none) on every command; ``--smooth`` alone is 3, ``--no-smooth`` 1."""
    smooth = next(p for p in command(*names).params if p.name == "smooth")
    assert isinstance(smooth.type, click.IntRange) and smooth.default == 1 and smooth.flag_value == 3
    assert "--no-smooth" in options(*names)
    required = [p for p in command(*names).params if getattr(p, "required", False) and p.param_type_name == "option"]
    with click.Context(command(*names)) as ctx:
        page = command(*names).get_help(ctx)
    assert "--smooth N" in page and page.count("[required]") >= len(required) > 0


def test_smooth_values(capsys):
    from geoclf.landuse import smoothing_window
    from tiling.errors import InputError

    assert [smoothing_window(v) for v in (True, False, 1, 3, 5)] == [3, 1, 1, 3, 5]
    with pytest.raises(InputError, match="odd number"):
        smoothing_window(2)
    trend = command("trend")
    parsed = {tuple(args): trend.make_context("trend", ["--out", "o", "--maps", "a", "b", *args]).params["smooth"]
              for args in ([], ["--smooth"], ["--smooth", "5"])}
    assert parsed == {(): 1, ("--smooth",): 3, ("--smooth", "5"): 5}
    with pytest.raises(SystemExit) as exited:
        main(["trend", "--out", "o", "--maps", "a", "b", "--smooth", "4"])
    assert exited.value.code == 2 and "4 is not an odd number" in capsys.readouterr().err
