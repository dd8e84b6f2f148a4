"""The selection rule of the paper and SAEBench, and the `unlearn select-features` command.

Statistics come from `feature_stats` (forget and retain text streamed to the SAE's hook point only).
Selection (Farrell et al. 2024, arXiv 2410.19278 §4; SAEBench `get_top_features`): drop features whose
retain firing frequency exceeds `retain_threshold` (SAEBench sweeps 0.001 and 0.01), rank the rest by
forget frequency (or by forget/retain ratio), keep the first `n_features` that fire on forget text at
all. A second, cheap pass over the forget text records each selected feature's top-activating contexts,
so a person can judge whether it is really about the topic (the paper inspects features by hand).
Each selection also records its features' typical activations, frequency-matched random control features
and its topic-detection AUROC on held-out questions (`feature_checks`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from unlearn.checks import finite_float, positive_int
from unlearn.clamp.feature_checks import control_info, held_out_sources, iter_sources, selection_auroc
from unlearn.clamp.feature_stats import (
    FeatureStats,
    accumulate,
    load_counters,
    save_counters,
    token_chunks,
    top_contexts,
)
from unlearn.errors import UnlearnError
from unlearn.eval.suite import weight_fingerprint
from unlearn.hooks import check_compatible, hook_device, hook_width
from unlearn.models import LoadedModel, load_model
from unlearn.options import Flag, RunFlags, command
from unlearn.paths import results_dir
from unlearn.progress import progress_bar
from unlearn.results import (
    check_new_run,
    is_complete,
    latest_run_dir,
    open_run,
    read_json,
    write_json,
    write_table,
)
from unlearn.sae.loaders import load_sae
from unlearn.sae.model import SAE
from unlearn.setup import Setup, setup_of

log = logging.getLogger(__name__)

RankBy = Literal["freq", "ratio", "log-odds"]

LOG_ODDS_Z = 1.0
"""`log-odds` ranks by the log odds ratio minus this many standard errors. Chosen on dev (embedded
default, 50 features, detection AUROC on dev questions): z = 0 / 0.5 / 1 / 1.64 / 2 gave 0.785 / 0.855 /
0.899 / 0.879 / 0.870; ranking by `ratio` gave 0.840, by `freq` 0.716."""


def ratio_F(forget: FeatureStats, retain: FeatureStats) -> Tensor:
    """forget freq / retain freq, with a retain frequency of 0 read as `1 / retain tokens` (the resolution
    of the measurement), so features that never fired on retain text rank by forget frequency among
    themselves instead of all tying at infinity."""
    floor = 1.0 / max(retain.n_tokens, 1)
    return forget.freq_F / retain.freq_F.clamp(min=floor)


def log_odds_F(forget: FeatureStats, retain: FeatureStats, z: float = LOG_ODDS_Z) -> Tensor:
    """Lower confidence bound of each feature's forget-vs-retain log odds ratio of firing per token:
    `log OR - z * SE`, with the Haldane-Anscombe +0.5 correction and Woolf's standard error
    `sqrt(sum 1/cell)` (Agresti, *Categorical Data Analysis*, §3.1). A feature seen 5 times on forget
    and never on retain text no longer outranks one seen 100 times against 2: the bound pays for the
    rare feature's uncertainty, as the z-scored log-odds of Monroe, Colaresi & Quinn (2008) do."""
    a = forget.fire_count_F.double().cpu() + 0.5
    b = forget.n_tokens - forget.fire_count_F.double().cpu() + 0.5
    c = retain.fire_count_F.double().cpu() + 0.5
    d = retain.n_tokens - retain.fire_count_F.double().cpu() + 0.5
    return (a / b).log() - (c / d).log() - z * (1 / a + 1 / b + 1 / c + 1 / d).sqrt()


def select_features(
    forget: FeatureStats,
    retain: FeatureStats,
    *,
    retain_threshold: float = 0.01,
    n_features: int = 50,
    rank_by: RankBy = "freq",
) -> list[int]:
    """Feature ids, best first: retain freq ≤ threshold, forget freq > 0, ranked by `rank_by`
    (ties broken by forget frequency, then by id)."""
    forget_freq, retain_freq = forget.freq_F.cpu(), retain.freq_F.cpu()
    scores = {"freq": lambda: forget_freq, "ratio": lambda: ratio_F(forget, retain).cpu(),
              "log-odds": lambda: log_odds_F(forget, retain)}  # fmt: skip
    score = scores[rank_by]()
    ok = (retain_freq <= retain_threshold) & (forget_freq > 0)
    ids = torch.nonzero(ok).flatten().tolist()
    ids.sort(key=lambda i: (-float(score[i]), -float(forget_freq[i]), i))
    return ids[:n_features]


# --- the command ---------------------------------------------------------------------------------------


@dataclass
class SelectConfig(RunFlags):
    sae: str | None = None
    """SAE instead of the preset's: registry id, SAELens folder or params.npz."""
    hook: str | None = None
    """Hook point instead of the SAE's / the preset's (e.g. blocks.6.hook_resid_post)."""
    topics: list[str] = field(default_factory=lambda: ["bio"])
    """Topics to select features for; each needs a forget text source (preset or `forget_sources`)."""
    forget_sources: dict[str, str | list[str]] = field(default_factory=dict)
    """topic -> text source (offline:bio-forget, questions:wmdp-bio, a .jsonl/.txt path) or a list of them
    (read in order), over the preset."""
    retain_source: str | list[str] | None = None
    """Retain text source(s) instead of the preset's (wikitext, offline:retain, a path)."""
    auroc_forget: list[str] | None = None
    """Held-out forget question sources for the topic-detection AUROC (default: the preset's first
    evaluation forget source on its @test split)."""
    auroc_retain: list[str] | None = None
    """Held-out retain question sources for the AUROC (default: the preset's evaluation retain sources
    on @test). With neither a preset nor these, no AUROC is computed."""
    seed: int = 0
    """Seed of the frequency-matched random control features."""
    retain_threshold: float = 0.01
    """Drop features firing on more than this fraction of retain tokens."""
    n_features: int = 50
    """How many ranked features to keep per topic (intervene takes the top n of them)."""
    rank_by: RankBy | None = None
    """Rank surviving features by forget frequency (`freq`, the paper), forget/retain `ratio`, or the
    lower bound of their `log-odds` ratio (`log_odds_F`; default: the preset's `select.rank_by`, else `freq`)."""
    max_tokens: int = 60_000
    """Tokens (BOS excluded) read from each source; sized so the default run takes a few CPU minutes."""
    max_length: int = 128
    """Tokens per sequence (texts are cut into windows of this length, each starting with BOS)."""
    batch_tokens: int = 2048
    """Token slots per forward pass."""
    n_contexts: int = 8
    """Top-activating contexts recorded per selected feature."""
    context_tokens: int | None = 20_000
    """Forget tokens scanned for top contexts (None = all of them)."""
    counters_from: str | None = None
    """An earlier select-features run whose feature counters to reuse (same model, SAE, hook, sources and
    token budget): only the ranking and the context pass run, e.g. to compare `--rank-by` rules."""


def resolve_sae(
    setup: Setup, model: nn.Module, spec: str | None = None, hook: str | None = None
) -> tuple[SAE, str, str]:
    """(SAE, spec as recorded, hook point) for a run: `--sae`, else `spec` (e.g. a selection's), else the
    preset's; the hook point by `Setup.hook_for` (`--hook`, else `hook`, else the SAE's, else the preset's).

    The SAE is cast to the model's device and dtype: a float16 file on a CPU would otherwise run every
    encode in float16, which CPUs compute an order of magnitude slower (and less exactly) than float32."""
    spec = setup.sae_spec(spec)
    if not spec:
        raise UnlearnError("No SAE: pass --sae (a SAELens folder, params.npz or registry id).")
    param = next(model.parameters())
    sae = load_sae(spec, device=param.device, dtype=param.dtype)
    point = setup.hook_for(hook, sae.hook_name)
    if point is None:
        raise UnlearnError(
            f"SAE {spec!r} records no hook point; pass --hook (e.g. blocks.6.hook_resid_post)."
        )
    at = hook_device(model, point.name)  # under --device-map the hooked layer may sit on another device
    return (sae if at == param.device else sae.to(at)), spec, point.name


def _first_tokens(chunks: list[list[int]], n: int | None) -> list[list[int]]:
    """The leading chunks holding about `n` tokens (all of them for None): the context pass only needs
    a sample, and chunk indices stay those of the full list."""
    if n is None:
        return chunks
    total, out = 0, []
    for chunk in chunks:
        if total >= n:
            break
        out.append(chunk)
        total += len(chunk)
    return out


def _sources(cfg: SelectConfig, setup: Setup) -> tuple[dict[str, str | list], str | list]:
    known = dict(setup.select.get("forget_text", {}))
    known.update(cfg.forget_sources)
    missing = [t for t in cfg.topics if t not in known]
    if missing:
        raise UnlearnError(
            f"No forget text for topic(s) {', '.join(missing)}: pass --forget-source TOPIC=SOURCE "
            f"(preset topics: {', '.join(known) or 'none'})."
        )
    retain = cfg.retain_source or setup.select.get("retain_text")
    if not retain:
        raise UnlearnError(
            "No retain text: pass --retain-source (wikitext, offline:retain or a .jsonl path)."
        )
    return {t: known[t] for t in cfg.topics}, retain


def check_select_flags(cfg: SelectConfig) -> None:
    """Counts ≥ 1, a threshold in [0, 1], a plain new run id: before any model loads."""
    for name in ("n_features", "max_tokens", "max_length", "batch_tokens", "n_contexts", "context_tokens"):
        positive_int(getattr(cfg, name), f"--{name.replace('_', '-')}")
    if not 0 <= finite_float(cfg.retain_threshold, "--retain-threshold") <= 1:
        raise UnlearnError(
            f"--retain-threshold is a fraction of tokens in [0, 1], got {cfg.retain_threshold}"
        )
    check_new_run("select-features", cfg.run_id, overwrite=cfg.overwrite)


def run_select(cfg: SelectConfig, *, lm: LoadedModel | None = None, sae: SAE | None = None) -> Path:
    """Stats pass on each topic's forget text and on the retain text, selection, context pass; writes
    `results/select-features/<run-id>/` and returns it."""
    setup = setup_of(cfg)
    if cfg.rank_by is None:
        cfg = dataclasses.replace(cfg, rank_by=setup.select.get("rank_by") or "freq")
    if cfg.rank_by not in get_args(RankBy):
        raise UnlearnError(f"--rank-by must be one of {', '.join(get_args(RankBy))}, not {cfg.rank_by!r}.")
    check_select_flags(cfg)
    lm = lm or load_model(setup)
    setup = setup.on(lm)
    preset = setup.preset  # None: generic defaults (--model alone)
    forget_sources, retain_source = _sources(cfg, setup)
    if sae is None:
        sae, sae_spec, hook = resolve_sae(setup, lm.model)
    else:
        sae_spec, hook = cfg.sae or "<in-memory>", cfg.hook or sae.hook_name
    check_compatible(sae, hook_width(lm.model, hook), hook, lm.name)
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def chunks_of(source: str | list[str]) -> list[list[int]]:
        out = list(
            token_chunks(iter_sources(source), tok, max_length=cfg.max_length, max_tokens=cfg.max_tokens)
        )
        if not out:
            raise UnlearnError(f"Text source {source!r} yielded no text.")
        return out

    config = {
        "command": "select-features", "preset": preset.name if preset else None, "model": lm.name,
        "sae": sae_spec, "hook": hook, "topics": cfg.topics, "sources": {**forget_sources, "retain": retain_source},
        "retain_threshold": cfg.retain_threshold, "n_features": cfg.n_features, "rank_by": cfg.rank_by,
        "max_tokens": cfg.max_tokens, "max_length": cfg.max_length, "counters_from": cfg.counters_from,
        "weights": {"model": weight_fingerprint(lm.model), "sae": weight_fingerprint(sae)},
    }  # fmt: skip
    reused = _reusable_counters(cfg.counters_from, config, sae.W_enc.device) if cfg.counters_from else {}
    with open_run("select-features", config, run_id=cfg.run_id, overwrite=cfg.overwrite) as run:
        run_dir = run.path
        kw = dict(pad_id=pad, bos_id=tok.bos_token_id, batch_tokens=cfg.batch_tokens)
        topics: dict[str, dict] = {}
        table = pd.DataFrame({"feature": range(sae.d_sae)})
        with progress_bar("{task.description}", clock=None, tokens_per_second=True) as bar:
            retain = reused.get("retain") or accumulate(
                lm.model, sae, hook, chunks_of(retain_source), bar=bar, desc="retain", **kw
            )
            counters = {"retain": retain}
            table["retain_freq"] = retain.freq_F.cpu().numpy()
            table["retain_mean_act"] = retain.mean_act_F.cpu().numpy()
            for topic, source in forget_sources.items():
                chunks = chunks_of(source)
                forget = reused.get(topic) or accumulate(
                    lm.model, sae, hook, chunks, bar=bar, desc=topic, **kw
                )
                counters[topic] = forget
                ids = select_features(forget, retain, retain_threshold=cfg.retain_threshold,
                                      n_features=cfg.n_features, rank_by=cfg.rank_by)  # fmt: skip
                ratio = ratio_F(forget, retain).cpu()
                table[f"{topic}_freq"] = forget.freq_F.cpu().numpy()
                table[f"{topic}_mean_act"] = forget.mean_act_F.cpu().numpy()
                table[f"{topic}_ratio"] = ratio.numpy()
                table[f"{topic}_rank"] = pd.array([pd.NA] * sae.d_sae, dtype="Int64")
                table.loc[ids, f"{topic}_rank"] = range(1, len(ids) + 1)
                few = _first_tokens(chunks, cfg.context_tokens)
                ctx = top_contexts(lm.model, sae, hook, few, ids, tok, k=cfg.n_contexts,
                                   batch_tokens=cfg.batch_tokens, bar=bar)  # fmt: skip
                stats = [
                    {"feature": i, "forget_freq": float(forget.freq_F[i]), "retain_freq": float(retain.freq_F[i]),
                     "ratio": float(ratio[i]), "mean_act": float(forget.mean_act_F[i]), **ctx[i]}
                    for i in ids
                ]  # fmt: skip
                topics[topic] = {"features": ids, "source": source, "tokens": forget.n_tokens, "stats": stats}
        taken = {
            i for t in topics.values() for i in t["features"]
        }  # controls of one topic avoid every topic's
        for topic, t in topics.items():
            info = control_info(counters[topic], retain, t["features"], seed=cfg.seed, exclude=sorted(taken))
            taken |= set(info["controls"])
            t |= {"typical_activation": info.pop("typical_activation"), "controls": info}
        for t in topics.values():
            held_forget, held_retain = held_out_sources(preset, t["source"])
            held_forget, held_retain = cfg.auroc_forget or held_forget, cfg.auroc_retain or held_retain
            t["detection"] = (
                selection_auroc(
                    lm, sae, hook, t["features"], held_forget, held_retain, batch_tokens=cfg.batch_tokens
                )  # fmt: skip
                if held_forget and held_retain
                else None
            )
            t["auroc"] = t["detection"]["auroc"] if t["detection"] else None
        rule = {"retain_threshold": cfg.retain_threshold, "rank_by": cfg.rank_by, "n_features": cfg.n_features,
                "retain_source": retain_source, "retain_tokens": retain.n_tokens,
                "drop": "retain_freq > retain_threshold or forget_freq == 0"}  # fmt: skip
        features = {"sae": sae_spec, "hook": hook, "topics": topics, "rule": rule}
        write_table(run_dir / "stats.csv", table)
        save_counters(run_dir / COUNTERS_FILE, counters)
        write_json(run_dir / "features.json", features)  # the result: last before the completion record
    return run_dir


COUNTERS_FILE = "counters.safetensors"
_SAME_COUNTERS = ("model", "sae", "weights", "hook", "max_tokens", "max_length")
"""What counters depend on; `weights` catches a retrained SAE (or model) saved under the same path."""


def _reusable_counters(run: str, config: dict, device) -> dict[str, FeatureStats]:
    """The counters of run `run`, after checking they were counted on the same data as `config` asks."""
    run_dir = Path(run)
    if not (run_dir / COUNTERS_FILE).is_file():
        run_dir = results_dir() / "select-features" / run
    if not (run_dir / COUNTERS_FILE).is_file():
        raise UnlearnError(
            f"--counters-from {run!r}: no {COUNTERS_FILE} there; pass a select-features run folder "
            "(results/select-features/<run-id>) made by this version."
        )
    if not is_complete(run_dir):
        raise UnlearnError(
            f"--counters-from {run_dir}: that run did not complete (failed or killed); rerun it"
        )
    old = read_json(run_dir / "config.json")
    differ = [k for k in _SAME_COUNTERS if old.get(k) != config[k]]
    differ += [
        f"sources.{name}" for name, src in config["sources"].items() if old["sources"].get(name) != src
    ]
    if differ:
        raise UnlearnError(
            f"--counters-from {run_dir}: counted with different {', '.join(differ)}; its counters do not apply."
        )
    return load_counters(run_dir / COUNTERS_FILE, device)


def features_table(features: dict, topic: str, limit: int = 20) -> Table:
    """Rich table of a topic's selected features (from `features.json`)."""
    t = features["topics"][topic]
    table = Table(title=f"{topic}: {len(t['features'])} features ({features['hook']})")
    for col in ("rank", "feature", "forget freq", "retain freq", "ratio", "mean act", "top tokens"):
        table.add_column(col, justify="left" if col == "top tokens" else "right")
    for rank, s in enumerate(t["stats"][:limit], 1):
        tokens = ", ".join(repr(x) for x in s["top_tokens"][:5])
        table.add_row(str(rank), str(s["feature"]), f"{s['forget_freq']:.4f}", f"{s['retain_freq']:.5f}",
                      f"{s['ratio']:.1f}", f"{s['mean_act']:.2f}", tokens)  # fmt: skip
    if len(t["stats"]) > limit:
        table.caption = f"… {len(t['stats']) - limit} more in features.json"
    return table


@dataclass
class Selection:
    """A topic's ranked features, as `intervene` reads them from a select-features run."""

    features: list[int]
    sae: str | None
    hook: str | None
    topic: str | None
    retain_threshold: float | None
    rank_by: str | None
    """How the selection ranked features (freq or ratio), from its rule."""
    source: str | None
    """The features.json it came from."""
    typical: list[float] | None = None
    """Mean activation where active on forget text, per ranked feature (None: an older selection)."""
    controls: list[int] | None = None
    """Frequency-matched random control features, one per ranked feature."""
    control_typical: list[float] | None = None


def read_selection(path: str | Path | None = None, topic: str | None = None) -> Selection:
    """Ranked features of `topic` (default: the run's first) from a select-features run folder or its
    features.json; `path=None` takes the latest run under `results/select-features/`."""
    if path is None:
        run = latest_run_dir("select-features", require="features.json")
        if run is None:
            raise UnlearnError(
                "No feature selection found: run `unlearn select-features` first, or pass --features "
                "results/select-features/<run-id> or --feature-ids 1,2,3."
            )
        path = run
    path = Path(path)
    file = path / "features.json" if path.is_dir() else path
    if not file.is_file():
        raise UnlearnError(f"{file} not found: pass a select-features run folder or its features.json.")
    if (file.parent / "config.json").exists() and not is_complete(file.parent):
        raise UnlearnError(
            f"{file.parent} is not a completed select-features run (failed, killed or still running); "
            "rerun select-features or pass another --features"
        )
    data = read_json(file)
    topics = data.get("topics", {})
    topic = topic or next(iter(topics), None)
    if topic not in topics:
        raise UnlearnError(f"{file} has no topic {topic!r}; it has: {', '.join(topics) or 'none'}.")
    return Selection(features=[int(i) for i in topics[topic]["features"]], sae=data.get("sae"),
                     hook=data.get("hook"), topic=topic,
                     retain_threshold=data.get("rule", {}).get("retain_threshold"),
                     rank_by=data.get("rule", {}).get("rank_by"), source=str(file),
                     typical=topics[topic].get("typical_activation"),
                     controls=(topics[topic].get("controls") or {}).get("controls"),
                     control_typical=(topics[topic].get("controls") or {}).get("control_typical_activation"))  # fmt: skip


def _parse_sources(pairs: list[str]) -> dict[str, str | list[str]]:
    """TOPIC=SOURCE pairs; a topic given more than once reads its sources in order."""
    out: dict[str, str | list[str]] = {}
    for pair in pairs:
        topic, sep, source = pair.partition("=")
        if not sep or not topic or not source:
            raise UnlearnError(
                f"--forget-source takes TOPIC=SOURCE (e.g. bio=offline:bio-forget), got {pair!r}."
            )
        out[topic] = (
            [*([out[topic]] if isinstance(out[topic], str) else out[topic]), source]
            if topic in out
            else source
        )
    return out


def show_selection(cfg: SelectConfig) -> None:
    """`unlearn select-features`: run the selection and print each topic's features and detection AUROC."""
    run_dir = run_select(cfg)
    features = read_json(run_dir / "features.json")
    console = Console()
    for name, t in features["topics"].items():
        console.print(features_table(features, name))
        if t.get("detection") and t["detection"]["auroc"] is not None:
            d = t["detection"]
            top = ", ".join(f"top {n}: {v:.3f}" for n, v in d["auroc_top"].items())
            console.print(f"{name}: topic-detection AUROC {d['auroc']:.3f} ({top}) on {d['n_forget']} "
                          f"{'+'.join(d['forget'])} vs {d['n_retain']} {'+'.join(d['retain'])} questions")  # fmt: skip
    console.print(f"wrote {run_dir}")


select_features_command = command(
    SelectConfig,
    show_selection,
    doc="Select SAE features that fire on forget text and (almost) never on retain text.",
    flags={
        "topics": Flag("--topic", help="Topic(s) to select for (repeatable; default bio)."),
        "forget_sources": Flag("--forget-source", type=list[str] | None, parse=lambda v: _parse_sources(v or []),
                               help="TOPIC=SOURCE forget text source (repeatable, read in order)."),
        "retain_source": Flag(type=str | None, parse=lambda v: v.split(",") if v and "," in v else v,
                              help="Retain text source(s), a comma list read in order (default: the preset's)."),
        "auroc_forget": Flag(comma=True),
        "auroc_retain": Flag(comma=True),
    },
)  # fmt: skip
