"""An RMU run's trained matrices on disk: saved once, found by run folder / file / id, loaded into a model.

`unlearn eval --rmu RUN` and `unlearn attack --target rmu:RUN` read runs through `weights_path` /
`completed_rmu_weights` (the one run locator); only `rmu.run` writes them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from unlearn.checks import require_finite_tensors
from unlearn.errors import UnlearnError
from unlearn.paths import results_dir
from unlearn.results import FAILED_FILE, is_complete, write_bytes

WEIGHTS_FILE = "weights.safetensors"


def save_rmu_weights(path: Path, weights: dict[str, Tensor], metadata: dict[str, str]) -> None:
    require_finite_tensors(weights, f"RMU weights to be saved at {path}", "not saved; lower --lr")
    write_bytes(path, save(weights, metadata=metadata))


def completed_rmu_weights(run: str | Path) -> Path:
    """The weights of a *completed* rmu-baseline run (`eval --rmu`): a killed or failed run is refused."""
    path = weights_path(run)
    run_dir = path.parent
    if (run_dir / "config.json").exists() and not is_complete(run_dir):
        why = (
            (run_dir / FAILED_FILE).read_text(errors="replace").strip()[:200]
            if (run_dir / FAILED_FILE).exists()
            else "it has no completion record (killed, or still running)"
        )
        raise UnlearnError(
            f"--rmu {run}: run {run_dir} did not complete ({why}); pass a finished rmu-baseline run"
        )
    return path


def run_candidates(run: str | Path, results: Path | None = None) -> tuple[Path, Path, Path]:
    """Where an rmu-baseline run named `run` may be, in the order looked at: as given, under the results
    tree (default: `results_dir()`), under its `rmu-baseline/` folder (a bare run id)."""
    results = results_dir() if results is None else results
    return Path(run), results / Path(run), results / "rmu-baseline" / Path(run)


def weights_path(run: str | Path) -> Path:
    """A run folder, its `weights.safetensors`, or a run id under results/rmu-baseline/."""
    for cand in run_candidates(run):
        if cand.is_file():
            return cand
        if (cand / WEIGHTS_FILE).is_file():
            return cand / WEIGHTS_FILE
    raise UnlearnError(
        f"No RMU weights at {run!r}: pass a run folder (results/rmu-baseline/<run-id>) holding {WEIGHTS_FILE} "
        "from a finished `unlearn rmu-baseline` run."
    )


def load_rmu_weights(model: nn.Module, run: str | Path) -> list[str]:
    """Copy a run's trained matrices into `model` (loaded from the same base model); returns their names.

    Names and shapes must match the model's parameters exactly (else UnlearnError, nothing changed).
    """
    path = weights_path(run)
    weights = load_file(str(path))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    wrong = [f"{n}: {tuple(w.shape)} vs {tuple(params[n].shape)}" for n, w in weights.items()
             if n in params and w.shape != params[n].shape]  # fmt: skip
    if missing or wrong or not weights:
        raise UnlearnError(
            f"RMU weights {path} do not fit this model (unknown names {missing[:3]}, shape mismatches {wrong[:3]}"
            f"{', empty file' if not weights else ''}); load the same base model the run used (see its config.json)."
        )
    require_finite_tensors(weights, str(path), "the RMU run diverged; retrain it with a lower --lr")
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w.to(device=params[n].device, dtype=params[n].dtype))
    return list(weights)
