"""CLI options declared once: a command's flags are its config dataclass's fields, each with the field's
default and the field's docstring as its help text (as EleutherAI/sparsify builds its CLI from its
config dataclasses), plus `--results DIR` on every command that writes.

`command(Config, run, flags=...)` builds the typer command; `Flag` says where a field's flag differs from
the plain `--field-name` (another name, a comma-separated list, a repeatable option, a parser).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from unlearn.checks import finite_float
from unlearn.errors import UnlearnError
from unlearn.paths import results_at

RESULTS_HELP = "Results tree the run is written into (default: $UNLEARN_RESULTS, else ./results)."


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Each dataclass field's docstring (the string literal right after it), base classes included."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError):  # no source (e.g. a frozen build): no help text
            continue
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def parse_list(text: str | None, kind: Callable = str, flag: str = "a list") -> list | None:
    """A comma-separated flag value (`-5,-20,-50`) as a list of `kind` (floats must be finite); None
    stays None. The one comma-list parser of the CLI."""
    if text is None:
        return None
    try:
        values = [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UnlearnError(
            f"Expected a comma-separated list of {kind.__name__} values, got {text!r}."
        ) from None
    return [finite_float(v, f"{flag} {text!r}: every value") for v in values] if kind is float else values


@dataclass(frozen=True)
class Flag:
    """How one config field appears on the command line, where it differs from plain `--field-name`."""

    name: str | None = None
    """The flag instead of `--field-name` (e.g. `--scale` for the field `scales`); `--x/--no-x` for booleans."""
    comma: bool = False
    """A list field given as one comma-separated value (`--scale -5,-20`)."""
    parse: Callable[[Any], Any] | None = None
    """Turns the flag's value into the field's (with `type` as the flag's type)."""
    type: Any = None
    help: str | None = None
    """Help instead of the field docstring."""
    nested: bool = False
    """A dataclass field whose own fields are flags too (e.g. train-sae's optimisation settings)."""
    aliases: tuple[str, ...] = ()
    """Further names of the same flag (e.g. `--gates` beside `--gate`)."""
    argument: bool = False
    """A positional argument instead of an option (e.g. list-saes' RELEASE)."""


@dataclass
class ModelFlags:
    """The flags that pick the model and its settings (`unlearn.setup.resolve_setup`), shared by every
    command's config dataclass."""

    preset: str | None = None
    """Preset whose settings are used: --preset P alone = P's settings; with --model M, P's settings
    with model M; --model M alone = generic defaults; neither = gemma-3-270m."""
    model: str | None = None
    """Model instead of the preset's: hub id, local folder or .gguf file."""
    device: str | None = None
    """cpu, cuda, cuda:1 ... (default: cuda if available)."""
    dtype: str | None = None
    """Model dtype: float32, bfloat16 ... (default: the preset's)."""
    device_map: str | None = None
    """Place the model's layers across devices (accelerate): `auto` fills the GPUs in turn, then CPU
    memory, for models larger than one GPU; instead of --device."""


@dataclass
class RunFlags(ModelFlags):
    """`ModelFlags` plus the run folder's flags, shared by every command that writes a run."""

    run_id: str | None = None
    """Run folder name (default: a timestamp + random suffix)."""
    overwrite: bool = False
    """Replace an existing run of the same `run_id` (it is cleared first)."""


@dataclass
class EvalFlags:
    """The evaluation flags of the commands that score clamped models (intervene, screen-features,
    cross-topic); each defaults to the preset's `eval` setting."""

    protocol: str | None = None
    """Evaluation protocol instead of the preset's: letter, cloze or lm-eval."""
    forget_tasks: list[str] | None = None
    """Forget question sources instead of the preset's (comma list)."""
    retain_tasks: list[str] | None = None
    """Retain question sources instead of the preset's (comma list)."""
    known_only: bool = True
    """Score only questions the unhooked model knows, as the paper and SAEBench do."""
    limit: int | None = None
    """At most this many questions per source."""
    batch_size: int | None = None
    """Evaluation sequences per forward."""
    hook_cache: bool = True
    """Compute each batch up to the hook layer once and share it across the points (exact: the same
    logits bit for bit; `unlearn.eval.hook_cache`); --no-hook-cache runs every point in full."""


EVAL_FLAGS = {"forget_tasks": Flag(comma=True), "retain_tasks": Flag(comma=True),
              "known_only": Flag("--known-only/--all-questions")}  # fmt: skip
"""How `EvalFlags` appear on the command line."""


def _plain(tp: Any) -> tuple[Any, bool]:
    """(type without None, whether None was allowed); Literal -> str."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else str
    if typing.get_origin(tp) is Literal:
        tp = str
    return tp, optional


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def options(
    cls: type, flags: dict[str, Flag] | None = None, skip: Iterable[str] = ()
) -> list[inspect.Parameter]:
    """One typer option per field of `cls` (but `skip`, and fields no flag can hold: dicts, dataclasses)."""
    flags, skip, docs = flags or {}, set(skip), field_docs(cls)
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        flag = flags.get(f.name, Flag())
        tp, optional = _plain(hints[f.name])
        if flag.nested:
            params += options(tp, flags, skip)
            continue
        if f.name in skip or (
            flag.parse is None
            and (typing.get_origin(tp) is dict or tp is dict or dataclasses.is_dataclass(tp))
        ):
            continue
        default = _default(f)
        if flag.type is not None:  # the flag holds another type: its default is "not given"
            tp, optional, default = flag.type, True, None
        elif flag.comma:
            tp, default = str, None if default is None else ",".join(map(str, default))
        decls = [flag.name] if flag.name else []
        if tp is bool and optional and not flag.name:
            decls = [f"--{f.name.replace('_', '-')}/--no-{f.name.replace('_', '-')}"]
        if flag.aliases:
            decls = [*(decls or [f"--{f.name.replace('_', '-')}"]), *flag.aliases]
        help = flag.help or docs.get(f.name, "")
        option = typer.Argument(help=help) if flag.argument else typer.Option(*decls, help=help)
        annotation = Annotated[tp | None if optional or default is None else tp, option]  # type: ignore[operator]
        params.append(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        )
    return params


def command(
    cls: type,
    run: Callable[[Any], Any],
    *,
    doc: str,
    flags: dict[str, Flag] | None = None,
    skip: Iterable[str] = (),
) -> Callable[..., None]:
    """A typer command taking `cls`'s fields as options; it builds the config and calls `run(cfg)`."""
    flags = flags or {}
    params = options(cls, flags, skip)
    nested = {name: _plain(typing.get_type_hints(cls)[name])[0] for name, f in flags.items() if f.nested}

    def cmd(**values: Any) -> None:
        for name, sub in nested.items():
            own = {f.name for f in dataclasses.fields(sub)}
            values[name] = sub(**{k: values.pop(k) for k in list(values) if k in own})
        for name, value in values.items():
            if name in nested:
                continue
            flag = flags.get(name, Flag())
            if flag.parse is not None:
                values[name] = flag.parse(value)
            elif flag.comma:
                kind = typing.get_args(_plain(typing.get_type_hints(cls)[name])[0]) or (str,)
                values[name] = parse_list(value, kind[0], flag.name or f"--{name.replace('_', '-')}")
        run(cls(**values))

    cmd.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    cmd.__doc__ = doc
    cmd.__name__ = f"{cls.__name__}_command"
    cmd.config, cmd.flags, cmd.skip = cls, flags, frozenset(skip)  # type: ignore[attr-defined]
    return cmd


def writes_results(func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` with a `--results DIR` option: the results tree its run writes into (and reads earlier runs
    from), instead of `$UNLEARN_RESULTS` / `./results`."""
    sig = inspect.signature(func)
    param = inspect.Parameter(
        "results", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Path | None, typer.Option(help=RESULTS_HELP)],
    )  # fmt: skip

    @functools.wraps(func)
    def wrapper(*args: Any, results: Path | None = None, **kwargs: Any) -> Any:
        with results_at(results):
            return func(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), param])  # type: ignore[attr-defined]
    return wrapper
