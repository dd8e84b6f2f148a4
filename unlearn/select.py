"""Feature statistics on forget vs retain text, the selection rule of the paper and SAEBench, and the
`unlearn select-features` command.

Text is streamed through the model only up to the SAE's hook point (`hooks.forward_to`), encoded, and
reduced at once into float64 per-feature counters (`FeatureStats`), so no activation is stored. BOS and
padding positions are excluded: BOS residuals are outliers that many features fire on, and padding is
not text.

Selection (Farrell et al. 2024, arXiv 2410.19278 §4; SAEBench `get_top_features`): drop features whose
retain firing frequency exceeds `retain_threshold` (SAEBench sweeps 0.001 and 0.01), rank the rest by
forget frequency (or by forget/retain ratio), keep the first `n_features` that fire on forget text at
all. A second, cheap pass over the forget text records each selected feature's top-activating contexts,
so a person can judge whether it is really about the topic (the paper inspects features by hand).
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd
import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text
from torch import Tensor, nn

from unlearn.data import iter_texts
from unlearn.errors import UnlearnError
from unlearn.hooks import forward_to, hook_width
from unlearn.models import LoadedModel, load_model, model_spec
from unlearn.paths import resolve_data_path
from unlearn.presets import DEFAULT_PRESET, Preset
from unlearn.results import latest_run_dir, new_run_dir, read_json, write_json, write_table
from unlearn.saes import SAE, check_compatible, load_sae

log = logging.getLogger(__name__)

RankBy = Literal["freq", "ratio"]


@dataclass
class FeatureStats:
    """Per-feature counters over the counted tokens of one text source (float64, on the model device)."""

    n_tokens: int
    """Tokens counted (BOS and padding excluded)."""
    fire_count_F: Tensor
    """How many counted tokens each feature fired on (f > 0)."""
    act_sum_F: Tensor
    """Sum of each feature's activation over counted tokens."""

    @classmethod
    def empty(cls, d_sae: int, device: torch.device | str | None = None) -> FeatureStats:
        zeros = torch.zeros(d_sae, dtype=torch.float64, device=device)
        return cls(0, zeros, zeros.clone())

    def update(self, f_NF: Tensor) -> None:
        """Add the activations of N counted tokens."""
        self.n_tokens += f_NF.shape[0]
        self.fire_count_F += (f_NF > 0).sum(0, dtype=torch.float64)
        self.act_sum_F += f_NF.sum(0, dtype=torch.float64)

    @property
    def freq_F(self) -> Tensor:
        return self.fire_count_F / max(self.n_tokens, 1)

    @property
    def mean_act_F(self) -> Tensor:
        """Mean activation over the tokens where the feature fires (0 where it never does)."""
        return self.act_sum_F / self.fire_count_F.clamp(min=1)


def ratio_F(forget: FeatureStats, retain: FeatureStats) -> Tensor:
    """forget freq / retain freq, with a retain frequency of 0 read as `1 / retain tokens` (the resolution
    of the measurement), so features that never fired on retain text rank by forget frequency among
    themselves instead of all tying at infinity."""
    floor = 1.0 / max(retain.n_tokens, 1)
    return forget.freq_F / retain.freq_F.clamp(min=floor)


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
    score = forget_freq if rank_by == "freq" else ratio_F(forget, retain).cpu()
    ok = (retain_freq <= retain_threshold) & (forget_freq > 0)
    ids = torch.nonzero(ok).flatten().tolist()
    ids.sort(key=lambda i: (-float(score[i]), -float(forget_freq[i]), i))
    return ids[:n_features]


# --- token streams -----------------------------------------------------------------------------------


def token_chunks(
    texts: Iterable[str], tokenizer, *, max_length: int = 128, max_tokens: int | None = None
) -> Iterator[list[int]]:
    """Token id chunks of at most `max_length`, each starting with BOS (when the tokenizer has one), cut
    from consecutive windows of every text; stops after `max_tokens` counted (non-BOS) tokens."""
    bos = tokenizer.bos_token_id
    body = max_length - (bos is not None)
    left = max_tokens if max_tokens is not None else float("inf")
    group: list[str] = []

    def flush() -> Iterator[list[int]]:
        nonlocal left
        for ids in tokenizer(group, add_special_tokens=False)["input_ids"]:
            for start in range(0, len(ids), body):
                piece = ids[start : start + body][: int(min(body, left))]
                if not piece:
                    return
                left -= len(piece)
                yield ([bos] if bos is not None else []) + piece
                if left <= 0:
                    return

    for text in texts:
        if text and text.strip():
            group.append(text)
        if len(group) == 64:
            yield from flush()
            group = []
            if left <= 0:
                return
    if group and left > 0:
        yield from flush()


def batches(
    chunks: list[list[int]], pad_id: int, batch_tokens: int
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """(chunk indices, input_ids, attention_mask), right-padded, about `batch_tokens` slots each; chunks
    go longest first so that padding stays small."""
    order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i]))
    start = 0
    while start < len(order):
        width = len(chunks[order[start]])
        size = max(1, batch_tokens // max(width, 1))
        idx = order[start : start + size]
        start += size
        ids_BT = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask_BT = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids_BT[row, : len(chunks[i])] = torch.tensor(chunks[i])
            mask_BT[row, : len(chunks[i])] = 1
        yield idx, ids_BT, mask_BT


class _TokensPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:,.0f} tok/s" if task.speed else "… tok/s", style="progress.data.speed")


def progress_bar(**kwargs) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _TokensPerSecond(),
                    **kwargs)  # fmt: skip


def _counted_acts(
    model: nn.Module, hook: str, ids_BT: Tensor, mask_BT: Tensor, bos: int | None
) -> tuple[Tensor, Tensor]:
    """Hook activations of counted tokens (N, d_in) and the mask (B, T) that picked them."""
    device = next(model.parameters()).device
    ids_BT, mask_BT = ids_BT.to(device), mask_BT.to(device)
    x_BTD = forward_to(model, [hook], input_ids=ids_BT, attention_mask=mask_BT)[hook]
    keep_BT = mask_BT.bool() if bos is None else mask_BT.bool() & (ids_BT != bos)
    return x_BTD[keep_BT], keep_BT


@torch.inference_mode()
def accumulate(
    model: nn.Module,
    sae: nn.Module,
    hook: str,
    chunks: list[list[int]],
    *,
    pad_id: int,
    bos_id: int | None,
    batch_tokens: int = 2048,
    progress: Progress | None = None,
    desc: str = "stats",
) -> FeatureStats:
    """FeatureStats of `chunks` at `hook`: forward to the hook only, encode, reduce; nothing stored."""
    stats = FeatureStats.empty(sae.d_sae, sae.W_enc.device)
    task = progress.add_task(desc, total=sum(len(c) for c in chunks)) if progress else None
    for _, ids_BT, mask_BT in batches(chunks, pad_id, batch_tokens):
        x_ND, _ = _counted_acts(model, hook, ids_BT, mask_BT, bos_id)
        stats.update(sae.encode(x_ND))
        if progress is not None:
            progress.advance(task, int(mask_BT.sum()))
    return stats


@torch.inference_mode()
def top_contexts(
    model: nn.Module,
    sae: nn.Module,
    hook: str,
    chunks: list[list[int]],
    features: list[int],
    tokenizer,
    *,
    k: int = 8,
    window: tuple[int, int] = (12, 4),
    batch_tokens: int = 2048,
    progress: Progress | None = None,
) -> dict[int, dict[str, list]]:
    """For each feature: `contexts` (its k highest activations as text windows with the token marked
    «like this», with activation and chunk/position) and `top_tokens` (the tokens it fires on most)."""
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    heaps: list[list[tuple[float, int, int]]] = [[] for _ in features]  # min-heaps of (act, chunk, pos)
    counts: list[Counter] = [Counter() for _ in features]
    task = progress.add_task("contexts", total=sum(len(c) for c in chunks)) if progress else None
    for idx, ids_BT, mask_BT in batches(chunks, pad if pad is not None else 0, batch_tokens):
        x_ND, keep_BT = _counted_acts(model, hook, ids_BT, mask_BT, bos)
        f_NK = sae.encode_subset(x_ND, features).float().cpu()
        where_N2 = keep_BT.nonzero().cpu()  # (row, pos) of each counted token
        tok_N = ids_BT[where_N2[:, 0], where_N2[:, 1]]
        for j in range(len(features)):
            fired = torch.nonzero(f_NK[:, j] > 0).flatten()
            if not len(fired):
                continue
            counts[j].update(tok_N[fired].tolist())
            best = fired[f_NK[fired, j].topk(min(k, len(fired))).indices]
            for n in best.tolist():
                item = (float(f_NK[n, j]), idx[int(where_N2[n, 0])], int(where_N2[n, 1]))
                (heapq.heappush if len(heaps[j]) < k else heapq.heappushpop)(heaps[j], item)
        if progress is not None:
            progress.advance(task, int(mask_BT.sum()))
    out = {}
    for j, feat in enumerate(features):
        contexts = [
            {
                "act": round(act, 4),
                "chunk": c,
                "pos": p,
                "text": _context_text(tokenizer, chunks[c], p, window),
            }
            for act, c, p in sorted(heaps[j], reverse=True)
        ]
        top = [tokenizer.decode([t]) for t, _ in counts[j].most_common(5)]
        out[feat] = {"top_tokens": top, "contexts": contexts}
    return out


def _context_text(tokenizer, ids: list[int], pos: int, window: tuple[int, int]) -> str:
    before = tokenizer.decode(ids[max(0, pos - window[0]) : pos], skip_special_tokens=True)
    token = tokenizer.decode([ids[pos]])
    after = tokenizer.decode(ids[pos + 1 : pos + 1 + window[1]], skip_special_tokens=True)
    return f"{before}«{token}»{after}".replace("\n", "⏎")


# --- the command ---------------------------------------------------------------------------------------


@dataclass
class SelectConfig:
    preset: str = DEFAULT_PRESET
    """Preset whose model, SAE, hook point and text sources are used."""
    model: str | None = None
    """Model instead of the preset's: hub id, local folder or .gguf file."""
    sae: str | None = None
    """SAE instead of the preset's: registry id, SAELens folder or params.npz."""
    hook: str | None = None
    """Hook point instead of the SAE's / the preset's (e.g. blocks.6.hook_resid_post)."""
    topics: list[str] = field(default_factory=lambda: ["bio"])
    """Topics to select features for; each needs a forget text source (preset or `forget_sources`)."""
    forget_sources: dict[str, str] = field(default_factory=dict)
    """topic -> text source (offline:bio-forget, questions:wmdp-bio, a .jsonl/.txt path), over the preset."""
    retain_source: str | None = None
    """Retain text source instead of the preset's (wikitext, offline:retain, a path)."""
    retain_threshold: float = 0.01
    """Drop features firing on more than this fraction of retain tokens."""
    n_features: int = 50
    """How many ranked features to keep per topic (intervene takes the top n of them)."""
    rank_by: RankBy = "freq"
    """Rank surviving features by forget frequency (`freq`, the paper) or forget/retain `ratio`."""
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
    device: str | None = None
    dtype: str | None = None
    run_id: str | None = None
    """Name of the run folder (default: a timestamp)."""


def resolve_sae(
    spec: str | None, hook: str | None, preset: Preset | None, model: nn.Module
) -> tuple[SAE, str, str]:
    """(SAE, spec as recorded, hook point): `spec` or the preset's, preset paths (`data/...`) resolved.

    The SAE is cast to the model's device and dtype: a float16 file on a CPU would otherwise run every
    encode in float16, which CPUs compute an order of magnitude slower (and less exactly) than float32."""
    spec = spec or (preset.sae if preset else None)
    if not spec:
        raise UnlearnError("No SAE: pass --sae (a SAELens folder, params.npz or registry id).")
    local = resolve_data_path(spec)
    if local.exists():
        spec_used = str(local)
    elif spec.startswith(("data/", "/", "./", "~")):
        raise UnlearnError(
            f"SAE {spec!r} not found (looked at {local}). Train it with `unlearn train-sae` or pass --sae."
        )
    else:
        spec_used = spec
    param = next(model.parameters())
    sae = load_sae(spec_used, device=param.device, dtype=param.dtype)
    hook = hook or sae.hook_name or (preset.hook_point if preset else None)
    if not hook:
        raise UnlearnError(
            f"SAE {spec!r} records no hook point; pass --hook (e.g. blocks.6.hook_resid_post)."
        )
    return sae, spec, hook


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


def _sources(cfg: SelectConfig, preset: Preset | None) -> tuple[dict[str, str], str]:
    known = dict(preset.select.get("forget_text", {})) if preset else {}
    known.update(cfg.forget_sources)
    missing = [t for t in cfg.topics if t not in known]
    if missing:
        raise UnlearnError(
            f"No forget text for topic(s) {', '.join(missing)}: pass --forget-source TOPIC=SOURCE "
            f"(preset topics: {', '.join(known) or 'none'})."
        )
    retain = cfg.retain_source or (preset.select.get("retain_text") if preset else None)
    if not retain:
        raise UnlearnError(
            "No retain text: pass --retain-source (wikitext, offline:retain or a .jsonl path)."
        )
    return {t: known[t] for t in cfg.topics}, retain


def run_select(cfg: SelectConfig, *, lm: LoadedModel | None = None, sae: SAE | None = None) -> Path:
    """Stats pass on each topic's forget text and on the retain text, selection, context pass; writes
    `results/select-features/<run-id>/` and returns it."""
    if cfg.rank_by not in ("freq", "ratio"):
        raise UnlearnError(f"--rank-by must be freq or ratio, not {cfg.rank_by!r}.")
    lm = lm or load_model(model_spec(cfg.preset, cfg.model), device=cfg.device, dtype=cfg.dtype)
    preset = lm.preset  # None when --model names a non-preset model
    forget_sources, retain_source = _sources(cfg, preset)
    if sae is None:
        sae, sae_spec, hook = resolve_sae(cfg.sae, cfg.hook, preset, lm.model)
    else:
        sae_spec, hook = cfg.sae or "<in-memory>", cfg.hook or sae.hook_name
    check_compatible(sae, hook_width(lm.model, hook), hook, lm.name)
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def chunks_of(source: str) -> list[list[int]]:
        out = list(
            token_chunks(iter_texts(source), tok, max_length=cfg.max_length, max_tokens=cfg.max_tokens)
        )
        if not out:
            raise UnlearnError(f"Text source {source!r} yielded no text.")
        return out

    run_dir = new_run_dir("select-features", cfg.run_id)
    write_json(run_dir / "config.json", {
        "command": "select-features", "preset": preset.name if preset else None, "model": lm.name,
        "sae": sae_spec, "hook": hook, "topics": cfg.topics, "sources": {**forget_sources, "retain": retain_source},
        "retain_threshold": cfg.retain_threshold, "n_features": cfg.n_features, "rank_by": cfg.rank_by,
        "max_tokens": cfg.max_tokens, "max_length": cfg.max_length,
    })  # fmt: skip
    kw = dict(pad_id=pad, bos_id=tok.bos_token_id, batch_tokens=cfg.batch_tokens)
    topics: dict[str, dict] = {}
    table = pd.DataFrame({"feature": range(sae.d_sae)})
    with progress_bar() as bar:
        retain = accumulate(lm.model, sae, hook, chunks_of(retain_source), progress=bar, desc="retain", **kw)
        table["retain_freq"] = retain.freq_F.cpu().numpy()
        table["retain_mean_act"] = retain.mean_act_F.cpu().numpy()
        for topic, source in forget_sources.items():
            chunks = chunks_of(source)
            forget = accumulate(lm.model, sae, hook, chunks, progress=bar, desc=topic, **kw)
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
                               batch_tokens=cfg.batch_tokens, progress=bar)  # fmt: skip
            stats = [
                {"feature": i, "forget_freq": float(forget.freq_F[i]), "retain_freq": float(retain.freq_F[i]),
                 "ratio": float(ratio[i]), "mean_act": float(forget.mean_act_F[i]), **ctx[i]}
                for i in ids
            ]  # fmt: skip
            topics[topic] = {"features": ids, "source": source, "tokens": forget.n_tokens, "stats": stats}
    rule = {"retain_threshold": cfg.retain_threshold, "rank_by": cfg.rank_by, "n_features": cfg.n_features,
            "retain_source": retain_source, "retain_tokens": retain.n_tokens,
            "drop": "retain_freq > retain_threshold or forget_freq == 0"}  # fmt: skip
    write_json(run_dir / "features.json", {"sae": sae_spec, "hook": hook, "topics": topics, "rule": rule})
    write_table(run_dir / "stats.csv", table)
    return run_dir


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
    source: str | None
    """The features.json it came from."""


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
    data = read_json(file)
    topics = data.get("topics", {})
    topic = topic or next(iter(topics), None)
    if topic not in topics:
        raise UnlearnError(f"{file} has no topic {topic!r}; it has: {', '.join(topics) or 'none'}.")
    return Selection(features=[int(i) for i in topics[topic]["features"]], sae=data.get("sae"),
                     hook=data.get("hook"), topic=topic,
                     retain_threshold=data.get("rule", {}).get("retain_threshold"), source=str(file))  # fmt: skip


def _parse_sources(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        topic, sep, source = pair.partition("=")
        if not sep or not topic or not source:
            raise UnlearnError(
                f"--forget-source takes TOPIC=SOURCE (e.g. bio=offline:bio-forget), got {pair!r}."
            )
        out[topic] = source
    return out


def select_features_command(
    topic: Annotated[list[str] | None, typer.Option(help="Topic(s) to select for (repeatable).")] = None,
    preset: Annotated[str, typer.Option(help="Model preset.")] = DEFAULT_PRESET,
    model: Annotated[str | None, typer.Option(help="Model instead of the preset's.")] = None,
    sae: Annotated[str | None, typer.Option(help="SAE instead of the preset's.")] = None,
    hook: Annotated[str | None, typer.Option(help="Hook point instead of the SAE's.")] = None,
    forget_source: Annotated[
        list[str] | None, typer.Option(help="TOPIC=SOURCE text source (repeatable).")
    ] = None,
    retain_source: Annotated[str | None, typer.Option(help="Retain text source.")] = None,
    retain_threshold: Annotated[float, typer.Option(help="Max retain firing frequency.")] = 0.01,
    n_features: Annotated[int, typer.Option(help="Features kept per topic.")] = 50,
    rank_by: Annotated[str, typer.Option(help="freq (paper) or ratio.")] = "freq",
    max_tokens: Annotated[int, typer.Option(help="Tokens read per source.")] = 60_000,
    max_length: Annotated[int, typer.Option(help="Tokens per sequence.")] = 128,
    batch_tokens: Annotated[int, typer.Option(help="Token slots per forward.")] = 2048,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16, ...")] = None,
    run_id: Annotated[str | None, typer.Option(help="Run folder name.")] = None,
) -> None:
    """Select SAE features that fire on forget text and (almost) never on retain text."""
    cfg = SelectConfig(
        preset=preset, model=model, sae=sae, hook=hook, topics=topic or ["bio"],
        forget_sources=_parse_sources(forget_source or []), retain_source=retain_source,
        retain_threshold=retain_threshold, n_features=n_features, rank_by=rank_by,  # type: ignore[arg-type]
        max_tokens=max_tokens, max_length=max_length, batch_tokens=batch_tokens, device=device, dtype=dtype,
        run_id=run_id,
    )  # fmt: skip
    run_dir = run_select(cfg)
    features = read_json(run_dir / "features.json")
    console = Console()
    for name in features["topics"]:
        console.print(features_table(features, name))
    console.print(f"wrote {run_dir}")
