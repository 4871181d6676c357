"""The documentation builds and tells the truth about the code.

- ``mkdocs build --strict`` passes: no broken link or anchor, no page left out of the navigation, no
  docstring the API reference cannot render.
- Every ``geoclf`` command line in the docs names a command that ``geoclf --help`` lists, and only options
  that command has.
- Every argument a docstring documents exists in its function's signature (the API reference is built with
  griffe's own check off, because geoclf documents related arguments together: ``mean, std: ...``).
- The recipe and the stage table of docs/recipes.md are what ``geoclf run`` accepts; scripts and library names
  (`geoclf.maps.write_maps`) the docs mention exist.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_SHELL_LANGUAGES = ("", "bash", "sh", "shell", "console")
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(?<!`)`(geoclf [^`]+)`(?!`)")


def doc_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def test_mkdocs_build_strict(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    problems = [line for line in done.stderr.splitlines() if not line.startswith("INFO")]
    assert done.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(problems[-40:])
    for page in doc_pages():  # every page was rendered (omitted pages would have failed the build already)
        assert (tmp_path / "site" / page.with_suffix(".html").name).is_file(), page.name


# -- command lines --------------------------------------------------------------------------------------------


def command_lines(text: str) -> list[list[str]]:
    """The argument lists following ``geoclf`` in shell code blocks and in `geoclf ...` code spans."""
    snippets = [body.replace("\\\n", " ") for language, body in _FENCE.findall(text)
                if language in _SHELL_LANGUAGES]
    prose = _FENCE.sub("", text)
    lines = [line for snippet in snippets for line in snippet.splitlines()] + _CODE_SPAN.findall(prose)
    found = []
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        for i, token in enumerate(tokens):
            if token == "geoclf" or token.endswith("/geoclf"):
                args = []
                for arg in tokens[i + 1:]:
                    if arg in (";", "&&", "||", "|", ")", "&"):
                        break
                    args.append(arg)
                found.append(args)
    return found


def test_command_lines_are_found():
    sample = "```bash\ngeoclf tile --naip a.tif \\\n  --nlcd n.tif  # comment --nope\ncd x && geoclf runs list\n```\n" \
             "Run `geoclf score --trust`.\n```python\nimport geoclf\n```\n"
    assert command_lines(sample) == [["tile", "--naip", "a.tif", "--nlcd", "n.tif"], ["runs", "list"],
                                     ["score", "--trust"]]


@pytest.fixture(scope="module")
def listed_commands() -> set[str]:
    """The commands ``geoclf --help`` lists, run as a user would."""
    done = subprocess.run([sys.executable, "-m", "geoclf", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    section = done.stdout.split("Commands:", 1)[1]
    return {match.group(1) for match in re.finditer(r"^  (\S+)", section, re.MULTILINE)}


def _options(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def test_every_documented_command_exists(listed_commands):
    from geoclf.cli import cli

    problems = []
    mentions = 0
    # options of geoclf itself (``geoclf --dashboard ADDRESS score ...``) come before the command
    group_options = {opt: param for param in cli.params if isinstance(param, click.Option) for opt in param.opts}
    for page in doc_pages():
        for args in command_lines(page.read_text(encoding="utf-8")):
            mentions += 1
            where = f"{page.name}: geoclf {' '.join(args)}"
            while args and not getattr(group_options.get(args[0].split("=", 1)[0]), "is_flag", True):
                args = args[1:] if "=" in args[0] else args[2:]
            if not args or args[0].startswith("-"):
                unknown = [a for a in args if a.startswith("-") and a not in ("--help", "-h", "--version")]
                if unknown:
                    problems.append(f"{where}: geoclf has no option {unknown[0]}")
                continue
            name, rest = args[0], args[1:]
            if name not in listed_commands:
                problems.append(f"{where}: `geoclf --help` lists no command {name!r}")
                continue
            with click.Context(cli) as ctx:
                command = cli.get_command(ctx, name)
            if isinstance(command, click.Group):
                sub = next((a for a in rest if not a.startswith("-")), None)
                if sub not in command.commands:
                    problems.append(f"{where}: `geoclf {name}` has no subcommand {sub!r}")
                    continue
                command = command.commands[sub]
            for arg in rest:
                option = arg.split("=", 1)[0]
                if option.startswith("-") and option not in _options(command):
                    problems.append(f"{where}: no option {option}")
    assert mentions > 20, "the docs should show the commands in use"
    assert not problems, "\n".join(problems)


def _parse(args: list[str]) -> None:
    """Parse a command line as ``geoclf`` would, down to its (sub)command, without running it."""
    from geoclf.cli import cli

    command: click.Command = cli
    ctx = None
    name = "geoclf"
    while True:
        ctx = command.make_context(name, list(args), parent=ctx)
        if not isinstance(command, click.Group):
            return
        remaining = [*ctx._protected_args, *ctx.args]
        if not remaining:
            return
        name, command, args = command.resolve_command(ctx, remaining)


def test_documented_command_lines_parse(capsys):
    # Every full command line of a shell block in the docs and the README parses: right subcommand, required
    # options given, values of the right type and choice. (Files that would exist in the walk-through are not
    # checked, nor lines with "..." or a shell substitution.) The README's `geoclf models register best`
    # was a usage error.
    problems, parsed = [], 0
    for page in [*doc_pages(), ROOT / "README.md"]:
        blocks = "".join(f"```bash\n{body}```\n" for language, body in _FENCE.findall(page.read_text(encoding="utf-8"))
                         if language in _SHELL_LANGUAGES)
        for args in command_lines(blocks):
            if any("..." in a or "…" in a or a in ("(", "$") or a.startswith("$(") for a in args):
                continue
            parsed += 1
            try:
                _parse(args)
            except click.exceptions.Exit:  # --help, --version
                pass
            except click.BadParameter as exc:
                if not isinstance(getattr(exc.param, "type", None), click.Path):
                    problems.append(f"{page.name}: geoclf {' '.join(args)}: {exc.format_message()}")
            except click.UsageError as exc:
                problems.append(f"{page.name}: geoclf {' '.join(args)}: {exc.format_message()}")
    capsys.readouterr()  # what --help lines printed
    assert parsed > 20
    assert not problems, "\n".join(problems)


# -- docstrings ----------------------------------------------------------------------------------------------


def test_documented_arguments_exist():
    griffe = pytest.importorskip("griffe")
    from griffe import DocstringSectionKind, ParameterKind

    problems = []

    def check(obj) -> None:
        if not obj.docstring:
            return
        params = obj.parameters
        if any(p.kind is ParameterKind.var_keyword for p in params):
            return  # documented names may flow into **kwargs
        names = {p.name for p in params}
        for section in obj.docstring.parse("google", warn_unknown_params=False, warn_missing_types=False):
            if section.kind is DocstringSectionKind.parameters:
                for entry in section.value:
                    for name in (n.strip() for n in entry.name.split(",")):
                        if name and name.lstrip("*") not in names:
                            problems.append(f"{obj.filepath.relative_to(ROOT)}:{obj.lineno} {obj.path}: "
                                            f"documents {name!r}, which is not a parameter")

    def walk(obj) -> None:
        for member in obj.members.values():
            if member.is_alias:
                continue
            if member.is_function or member.is_class:
                check(member)
            if member.is_class or member.is_module:
                walk(member)

    for package in ("tiling", "geoclf"):
        walk(griffe.load(package, search_paths=[str(ROOT)]))
    assert not problems, "\n".join(problems)


# -- recipes and examples ------------------------------------------------------------------------------------


def test_recipe_page_matches_geoclf_run(tmp_path):
    from geoclf.recipes import STAGES, load_recipe

    text = (DOCS / "recipes.md").read_text(encoding="utf-8")
    recipes = [body for language, body in _FENCE.findall(text) if language == "yaml"]
    assert recipes, "recipes.md shows a recipe"
    for i, body in enumerate(recipes):
        path = tmp_path / f"recipe-{i}.yaml"
        path.write_text(body)
        assert load_recipe(path).stages  # every stage and parameter is valid
    documented = re.findall(r"^\| `(\w+)` \| `([\w.]+)`", text, re.MULTILINE)
    assert documented, "recipes.md has a stage table"
    for stage, function in documented:
        assert stage in STAGES, f"recipes.md documents a stage {stage!r} that geoclf run does not know"
        STAGES[stage].function()  # importable
        module, _, name = function.rpartition(".")
        __import__(module)
        assert hasattr(sys.modules[module], name), f"recipes.md: {function} does not exist"


def test_examples_named_in_docs_exist():
    named = {match for page in doc_pages() for match in re.findall(r"examples/\w+\.py", page.read_text())}
    assert named, "the docs point to the examples"
    missing = sorted(name for name in named if not (ROOT / name).is_file())
    assert not missing, f"docs name examples that do not exist: {missing}"


def _resolve_name(dotted: str) -> bool:
    """True when ``dotted`` (``geoclf.maps.write_maps``, ``tiling.ChipReader.read``) names something real."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def test_python_names_in_docs_exist():
    names = {name for page in doc_pages()
             for name in re.findall(r"`((?:tiling|geoclf)(?:\.\w+)+)", page.read_text(encoding="utf-8"))}
    assert len(names) > 20, "the docs name the library's functions"
    missing = sorted(name for name in names if not _resolve_name(name))
    assert not missing, f"docs name things the code does not have: {missing}"
