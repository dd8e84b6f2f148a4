"""Every command's flags come from its config dataclass: `--help` lists each field once, with the field's
default and its docstring, and nothing else but `--results` and `--help`."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest
import typer
from typer.testing import CliRunner

from unlearn.cli import app
from unlearn.options import Flag, field_docs

COMMANDS = {c.name: c.callback for c in app.registered_commands}
WRITES = {"eval", "select-features", "intervene", "screen-features", "cross-topic", "rmu-baseline", "attack",
          "train-sae", "demo", "report"}  # fmt: skip


def _fields(cls: type, flags: dict[str, Flag], skip: frozenset) -> list[tuple[dataclasses.Field, Flag]]:
    """The fields a flag can hold: not skipped, not a dict (a nested dataclass: its own fields)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        flag = flags.get(f.name, Flag())
        inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if flag.nested:
            out += _fields(inner[0], flags, skip)
        elif f.name not in skip and (
            flag.parse is not None or not (typing.get_origin(inner[0]) is dict or inner[0] is dict)
        ):
            out.append((f, flag))
    return out


def _flag_name(f: dataclasses.Field, flag: Flag) -> str:
    return (flag.name or "--" + f.name.replace("_", "-")).split("/")[0]


def _shown_default(f: dataclasses.Field, flag: Flag) -> str | None:
    """How click shows the dataclass default (None: no default shown), computed from the dataclass alone."""
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if flag.type is not None or value is None or value == [] or value == "":
        return None
    if isinstance(value, bool):
        names = (flag.name or f"--{f.name.replace('_', '-')}/--no-{f.name.replace('_', '-')}").split("/")
        return names[0 if value else 1].lstrip("-")
    if isinstance(value, list | tuple):  # one comma-list value, or a repeatable option
        return ("," if flag.comma else ", ").join(map(str, value))
    return str(value)


def _rows(output: str) -> dict[str, str]:
    """Each option/argument row of rich's help box, continuation lines joined: first word -> row text."""
    rows: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        body = line.strip().strip("│").strip()
        if not line.strip().startswith("│"):
            current = None
            continue
        head = body.split(" ")[0] if body else ""
        if head.startswith("-") or (current is None and head):
            current = head.split(",")[0]
            rows.setdefault(current, []).append(body)
            rows[current].append("\x00")  # a second row of the same flag shows up as a second marker
        elif current is not None:
            rows[current].append(body)
    return {k: " ".join(v) for k, v in rows.items()}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_each_config_field_once_with_its_default(name, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per row where rich can
    monkeypatch.setenv("TERMINAL_WIDTH", "400")
    callback = COMMANDS[name]
    cls, flags, skip = callback.config, callback.flags, callback.skip
    result = CliRunner().invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    fields = _fields(cls, flags, skip)
    docs = {}
    for klass in {cls, *(typing.get_type_hints(cls)[n] for n, fl in flags.items() if fl.nested)}:
        docs.update(field_docs(typing.get_args(klass)[0] if typing.get_args(klass) else klass))
    expected = {_flag_name(f, flag) for f, flag in fields if not flag.argument}
    expected |= {f.name for f, flag in fields if flag.argument}
    extra = {"--help"} | ({"--results"} if name in WRITES else set())
    assert set(rows) == expected | extra, set(rows) ^ (expected | extra)
    for f, flag in fields:
        key = f.name if flag.argument else _flag_name(f, flag)
        row = re.sub(r"\s+", " ", rows[key])
        assert row.count("\x00") == 1, f"{key} listed twice"
        default = _shown_default(f, flag)
        if default is None:
            assert "[default:" not in row, (key, row)
        else:
            assert f"[default: {default}]" in row, (key, default, row)
        doc = flag.help or docs.get(f.name)
        assert doc, f"{name}: field {f.name} has no docstring (its help text)"
        assert " ".join(doc.split()[:4]) in row, (key, doc, row)


def test_every_writing_command_takes_results(tmp_path, monkeypatch):
    """`--results DIR` points the run at DIR instead of $UNLEARN_RESULTS (here: list-saes writes nothing,
    so the check is on the commands that do)."""
    monkeypatch.setenv("COLUMNS", "400")
    for name in WRITES:
        assert "--results" in _rows(CliRunner().invoke(app, [name, "--help"]).output), name


def test_aliases_and_arguments_reach_the_config():
    """`--gate`/`--gates` both fill `gates`; a positional argument fills its field; comma lists parse."""
    from dataclasses import dataclass, field

    from unlearn.options import command

    @dataclass
    class Cfg:
        gates: list[str] = field(default_factory=lambda: ["none"])
        """Gates."""
        release: str | None = None
        """A release."""
        scales: list[float] = field(default_factory=lambda: [-20.0])
        """Values."""

    seen = []
    sub = typer.Typer()
    sub.command()(command(Cfg, seen.append, doc="x", flags={"gates": Flag("--gate", aliases=("--gates",), comma=True),
                                                           "release": Flag(argument=True),
                                                           "scales": Flag("--scale", comma=True)}))  # fmt: skip
    runner = CliRunner()
    assert runner.invoke(sub, ["rel", "--gates", "dsg,window"]).exit_code == 0
    assert runner.invoke(sub, ["--gate", "cusum", "--scale", "-5,-50"]).exit_code == 0
    assert runner.invoke(sub, []).exit_code == 0
    assert seen == [Cfg(["dsg", "window"], "rel", [-20.0]), Cfg(["cusum"], None, [-5.0, -50.0]), Cfg()]
