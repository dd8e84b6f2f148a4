"""Where things live on disk: the repo's shipped data, the results tree and the user cache.

Each location can be overridden by an environment variable so that tests, CI and notebooks can
point the toolkit elsewhere without touching code.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def data_dir() -> Path:
    """Shipped offline data (question sets, corpora, the embedded model's SAE): `$UNLEARN_DATA` or `<repo>/data`."""
    return Path(os.environ.get("UNLEARN_DATA", REPO_DIR / "data"))


def results_dir() -> Path:
    """Root of the results tree every command writes into: `$UNLEARN_RESULTS` or `./results`."""
    return Path(os.environ.get("UNLEARN_RESULTS", "results"))


def cache_dir() -> Path:
    """User cache (converted embedded model, known-subset caches): `$UNLEARN_CACHE` or `~/.cache/unlearn`."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unlearn"
    path = Path(os.environ.get("UNLEARN_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_data_path(path: str | Path) -> Path:
    """A path as given if it exists, else relative to the shipped data folder (presets name `data/...` files)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    parts = p.parts
    rel = Path(*parts[1:]) if parts and parts[0] == "data" else p
    return data_dir() / rel
