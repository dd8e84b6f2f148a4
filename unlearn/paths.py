"""Where things live on disk: the data shipped inside the package, the results tree and the user cache.

Shipped data (question sets, corpora, the embedded model's SAE, lm-eval task YAMLs) lives in
`unlearn/shipped/` and is found through `importlib.resources`, so a wheel or a non-editable install
works from any folder; a `data/` folder in the working directory never shadows it. Each location can be
pointed elsewhere by an environment variable (tests, CI, notebooks).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

SHIPPED = "shipped:"
"""Prefix naming a file shipped with the package (presets use it: `shipped:saes/gemma-3-270m-res-l6`)."""


def shipped_dir() -> Path:
    """The package's shipped data (`unlearn/shipped/`), or `$UNLEARN_DATA` when set."""
    env = os.environ.get("UNLEARN_DATA")
    return Path(env) if env else Path(str(resources.files("unlearn").joinpath("shipped")))


_RESULTS: list[Path] = []
"""The `--results DIR` of the command running now (innermost last)."""


def results_dir() -> Path:
    """Root of the results tree every command writes into: `--results`, else `$UNLEARN_RESULTS`, else
    `./results`."""
    return _RESULTS[-1] if _RESULTS else Path(os.environ.get("UNLEARN_RESULTS", "results"))


@contextmanager
def results_at(path: str | Path | None) -> Iterator[None]:
    """`results_dir()` is `path` inside the block (a command's `--results`); None changes nothing."""
    if path is None:
        yield
        return
    _RESULTS.append(Path(path))
    try:
        yield
    finally:
        _RESULTS.pop()


def cache_dir() -> Path:
    """User cache (converted embedded model, known subsets, dilution baselines, feature-stats passes,
    hook-layer outputs): `$UNLEARN_CACHE` or `~/.cache/unlearn`."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unlearn"
    path = Path(os.environ.get("UNLEARN_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def keyed_cache_path(kind: str, key: dict) -> Path:
    """The cache file of `kind` for `key` (a JSON-able dict naming everything the entry depends on): the
    entry keeps `key` and a reader checks it, so a hash collision is never read as a hit."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_dir() / kind / f"{digest}.json"


def resolve_path(path: str | Path) -> Path:
    """The file a user or a preset names: `shipped:REL` is the package's copy; any other path is taken as
    given (an explicit path wins), except that a missing `data/REL` falls back to the package's copy, the
    form older runs recorded shipped files in."""
    text = str(path)
    if text.startswith(SHIPPED):
        return shipped_dir() / text.removeprefix(SHIPPED)
    p = Path(path).expanduser()
    if not p.exists() and p.parts[:1] == ("data",):
        legacy = shipped_dir() / Path(*p.parts[1:])
        if legacy.exists():
            return legacy
    return p
