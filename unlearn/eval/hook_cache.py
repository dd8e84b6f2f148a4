"""Compute the model up to the hook layer once per batch and share it across the points of a sweep.

Every point of an `intervene` sweep (static, gated, control and dilution points) and every trial of
`screen-features` forwards the same batches; the intervention acts at one hook point, so everything
before it is the same clean computation each time. `hook_layer_cache(model, hook_name)` wraps any caller
(the cloze and letter scorers, `forward_to`, lm-eval): inside it, the decoder body's forward keys each
call by its inputs (token ids, 2D or packed 4D attention mask or one per layer kind, position ids, any
other tensor, compared exactly with `torch.equal`), and

- on a *miss* runs normally while layer k's forward stores a clone of its own output, before any forward
  hook on that layer (an intervention at `blocks.k.hook_resid_post`) sees it; k is the hook's layer for
  `hook_resid_post` and the one before it otherwise (`hook_resid_pre`, `attn.hook_z`, `hook_mlp_out`);
- on a *hit* layers 0..k-1 return their input untouched and layer k returns a clone of the stored tensor,
  so layer k's forward hooks and every later layer run as usual: the logits are bit-identical to the full
  forward's (the same kernels on the same tensors), at the cost of the layers after k;
- *bypasses* (plain forward, nothing stored) whenever the skipped part would not be the same clean
  computation: grad enabled or training mode, a KV cache or `use_cache`, requested hidden states or
  attentions, a non-tensor input it cannot compare, or a live hook (`hooks.live_hooks`' rule, global
  hooks included) on any module of the skipped part: the embeddings, layers 0..k-1, layer k's pre-hooks
  and submodules. A changed parameter or buffer of the body outside the layers after k (a new object,
  storage or version counter: an optimizer step, `load_state_dict`, `copy_` under `no_grad`; not a write
  through `.data`, which no version counter sees) drops every entry first.

With a `LayerStore` (`store=`; the commands pass `layer_store()` whenever the cache is on), what a miss
computes is also written to `cache_dir()/hook-layer`, and a later run (another sweep, a screening, an
attack on the same model) reads it instead of recomputing: the same tensor, so the same bit-identical
logits. A stored output is named by a hash of everything it depends on: the bytes of every weight and
buffer of the skipped part, the model's configuration and attention implementation, the torch and
transformers versions, the thread count and device, layer k, and the bytes of every input tensor.

The pre-hook that `hooks.edit_with_inputs` puts on the body still runs (the body's forward is still
called), so gates and BOS protection see the token ids. Nothing here is a hook: the cache swaps the
`forward` of the body and of layers 0..k and restores them on exit (exceptions included), so
`live_hooks` and the suite's "unhooked" check see the model as it is.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from torch import Tensor, nn

from unlearn.hooks import decoder_layers, parse_hook_name, text_config

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 2 * 2**30
"""Cap on stored activations and keys (2 GiB); batches past it are recomputed (counted in `over_cap`)."""

DEFAULT_DISK_BYTES = 4 * 2**30
"""Cap on `cache_dir()/hook-layer` (4 GiB): past it the least recently used outputs are deleted."""

_IGNORED = {"return_dict"}
"""Body arguments that change the output's form, not its values."""


@dataclass
class CacheStats:
    """What the cache did: tests and `bench/bench_hook_cache.py` read these."""

    hits: int = 0
    misses: int = 0
    bypasses: Counter = field(default_factory=Counter)
    """Reason -> count."""
    over_cap: int = 0
    """Misses not stored because the cap was reached."""
    invalidations: int = 0
    """Times every entry was dropped because a prefix weight changed."""
    entries: int = 0
    bytes: int = 0
    disk_hits: int = 0
    """Misses in memory answered by the `LayerStore` (counted in `hits` too: nothing was recomputed)."""
    disk_writes: int = 0

    def as_dict(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "bypasses": dict(self.bypasses),
                "over_cap": self.over_cap, "invalidations": self.invalidations, "entries": self.entries,
                "bytes": self.bytes, "disk_hits": self.disk_hits, "disk_writes": self.disk_writes}  # fmt: skip


def _tensor_bytes(t: Tensor) -> memoryview:
    """The raw bytes of a tensor (any dtype, bfloat16 included; copied to the CPU if needed)."""
    flat = t.detach().contiguous().reshape(-1).view(torch.uint8)
    return memoryview(flat.cpu().numpy())


class LayerStore:
    """Layer-k outputs on disk, shared by every run on this machine (see the module docstring).

    One file per stored batch, `<root>/<prefix identity>/<key digest>.pt`, written atomically; reading one
    refreshes its time, and writing past `max_bytes` deletes the least recently used files first. An
    unreadable file is a miss (and is rewritten)."""

    def __init__(self, root: Path, *, max_bytes: int = DEFAULT_DISK_BYTES):
        self.root, self.max_bytes = Path(root), int(max_bytes)
        self._used: int | None = None

    def get(self, identity: str, digest: str, device: torch.device) -> Tensor | None:
        path = self.root / identity / f"{digest}.pt"
        try:
            out = torch.load(path, map_location=device, weights_only=True)
            os.utime(path)
        except Exception as e:  # missing, or anything a broken file raises (pickle, zip, EOF): recompute
            if path.exists():
                log.warning("unreadable hook-layer cache file %s (%s): recomputing", path, e)
            return None
        return out if torch.is_tensor(out) else None

    def put(self, identity: str, digest: str, out: Tensor) -> bool:
        size = out.numel() * out.element_size()
        if size > self.max_bytes:
            return False
        self._make_room(size)
        path = self.root / identity / f"{digest}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(out.detach().cpu().clone(), tmp)
        os.replace(tmp, path)
        self._used += path.stat().st_size  # `_make_room` counted what was there
        return True

    def _files(self) -> list[os.DirEntry]:
        if not self.root.exists():
            return []
        return [f for d in os.scandir(self.root) if d.is_dir() for f in os.scandir(d.path)
                if f.name.endswith(".pt")]  # fmt: skip

    def _make_room(self, size: int) -> None:
        if self._used is None:
            self._used = sum(f.stat().st_size for f in self._files())
        if self._used + size <= self.max_bytes:
            return
        for f in sorted(self._files(), key=lambda f: f.stat().st_mtime):  # least recently used first
            if self._used + size <= self.max_bytes:
                break
            try:
                self._used -= f.stat().st_size
                os.remove(f.path)
            except OSError:  # another process removed it first
                pass


def layer_store() -> LayerStore:
    """The store under the user cache (`paths.cache_dir`)."""
    from unlearn.paths import cache_dir

    return LayerStore(cache_dir() / "hook-layer")


def cached_layer(hook_name: str) -> int:
    """Index of the last decoder layer whose output the hook cannot change: the hook's own layer for
    `hook_resid_post` (an output hook on it), the one before for every other kind (-1: nothing to share)."""
    point = parse_hook_name(hook_name)
    return point.layer if point.module == "" and point.side == "output" else point.layer - 1


def _ours(hook) -> bool:
    return not (getattr(hook, "__module__", None) or "").startswith("transformers.")


def _hooked(module: nn.Module, *, forward: bool = True) -> bool:
    hooks = list(module._forward_pre_hooks.values()) + (
        list(module._forward_hooks.values()) if forward else []
    )
    return any(_ours(h) for h in hooks)


class HookLayerCache:
    """The cache of one model at one hook point; use it through `hook_layer_cache`."""

    def __init__(
        self,
        model: nn.Module,
        hook_name: str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        store: LayerStore | None = None,
    ):
        self.model, self.hook_name, self.max_bytes, self.store = model, hook_name, int(max_bytes), store
        self._identity: str | None = None  # of the prefix's weights, for `store`; None: not yet computed
        self.stats = CacheStats()
        self.k = cached_layer(hook_name)
        self.body = model.get_decoder() if hasattr(model, "get_decoder") else model
        self.layers = decoder_layers(model)
        if not 0 <= self.k < len(self.layers) or not any(m is self.layers for m in self.body.modules()):
            self.k = -1  # hook_resid_pre of layer 0 (nothing to share), or layers outside the body: idle
        after = {id(m) for layer in list(self.layers)[self.k + 1 :] for m in layer.modules()}
        self.prefix = [m for m in self.body.modules() if id(m) not in after]
        """Modules whose state can change layer k's output (conservative: the final norm too)."""
        self._entries: dict[tuple, list[tuple[dict[str, Tensor], Tensor]]] = {}
        self._signature: tuple | None = None
        self._frames: list[dict] = []  # one per body forward in progress: {"hit": Tensor} / {"store": key}
        self._saved: list[tuple[nn.Module, object]] = []

    # --- installing -----------------------------------------------------------------------------------

    def _swap(self, module: nn.Module, make) -> None:
        had = module.__dict__.get("forward", _MISSING)
        self._saved.append((module, had))
        module.forward = make(module.forward)

    def install(self) -> None:
        if id(self.model) in _ACTIVE or id(self.body) in _ACTIVE:
            self.k = -1  # inside another cache (whose hits skip layers this one would store): stay idle
        if self.k < 0:
            return
        params = inspect.signature(self.body.forward).parameters
        self._names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self._swap(self.body, self._body_forward)
        for i in range(self.k):
            self._swap(self.layers[i], self._skipped_forward)
        self._swap(self.layers[self.k], self._last_forward)
        _ACTIVE[id(self.model)] = _ACTIVE[id(self.body)] = self

    def restore(self) -> None:
        for key in (id(self.model), id(self.body)):
            if _ACTIVE.get(key) is self:
                del _ACTIVE[key]
        while self._saved:
            module, had = self._saved.pop()
            if had is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.forward = had
        self._frames.clear()

    @contextmanager
    def installed(self) -> Iterator[HookLayerCache]:
        """Installed inside the block, entries kept after it: blocks that run on the same model share them
        (the weights check still drops them when a prefix weight has changed in between)."""
        self.install()
        try:
            yield self
        finally:
            self.restore()

    def clear(self) -> None:
        """Drop every entry (the counters of what was done stay)."""
        self._entries.clear()
        self.stats.entries, self.stats.bytes = 0, 0

    # --- the swapped forwards -------------------------------------------------------------------------

    def _frame(self) -> dict:
        return self._frames[-1] if self._frames else {}

    def _skipped_forward(self, original):
        def forward(*args, **kwargs):
            if "hit" in self._frame():
                return args[0] if args else kwargs["hidden_states"]
            return original(*args, **kwargs)

        return forward

    def _last_forward(self, original):
        def forward(*args, **kwargs):
            frame = self._frame()
            if "hit" in frame:
                return frame.pop("hit").clone()
            out = original(*args, **kwargs)
            if "store" in frame:
                self._store(frame.pop("store"), out)
            return out

        return forward

    def _body_forward(self, original):
        def forward(*args, **kwargs):
            self._frames.append(self._lookup(args, kwargs))
            try:
                return original(*args, **kwargs)
            finally:
                self._frames.pop()

        return forward

    # --- keys, lookups, bypasses ----------------------------------------------------------------------

    def _bypass(self, reason: str) -> dict:
        self.stats.bypasses[reason] += 1
        return {}

    def _lookup(self, args: tuple, kwargs: dict) -> dict:
        """This forward's frame: {"hit": stored output}, {"store": key} (a miss), or {} (a bypass)."""
        if torch.is_grad_enabled():
            return self._bypass("grad enabled")
        if self.body.training:
            return self._bypass("training mode")
        if len(args) > len(self._names):
            return self._bypass("positional arguments")
        given = {**dict(zip(self._names, args, strict=False)), **kwargs}
        config = text_config(self.model)
        for flag in ("use_cache", "output_hidden_states", "output_attentions"):
            value = given.get(flag)
            if value if value is not None else getattr(config, flag, False):
                return self._bypass(flag)
        tensors, scalars = {}, []
        for name, value in sorted(given.items()):
            if value is None or name in _IGNORED or name == "use_cache" or name.startswith("output_"):
                continue
            if torch.is_tensor(value):
                tensors[name] = value
            elif isinstance(value, dict) and value and all(torch.is_tensor(v) for v in value.values()):
                tensors.update({f"{name}.{k}": v for k, v in sorted(value.items())})  # a mask per layer kind
            elif isinstance(value, (bool, int, float, str)):
                scalars.append((name, value))
            else:
                return self._bypass(f"input {name} ({type(value).__name__})")
        reason = self._prefix_hooked()
        if reason:
            return self._bypass(reason)
        self._check_weights()
        bucket = (tuple(scalars), tuple((n, t.shape, t.dtype, t.device) for n, t in tensors.items()))
        for stored, out in self._entries.get(bucket, []):
            if all(torch.equal(stored[n], t) for n, t in tensors.items()):
                self.stats.hits += 1
                return {"hit": out}
        identity = self.identity() if self.store is not None else None
        digest = self._digest(bucket, tensors) if identity is not None else None
        if digest is not None:
            device = next(self.layers[self.k].parameters(), tensors[next(iter(tensors))]).device
            out = self.store.get(identity, digest, device)
            if out is not None:
                self.stats.hits += 1
                self.stats.disk_hits += 1
                self._store((bucket, tensors, None), out)  # later hits come from memory
                return {"hit": out}
        self.stats.misses += 1
        return {"store": (bucket, tensors, digest)}

    def identity(self) -> str | None:
        """Hash of everything besides the inputs that layer k's output depends on: the bytes of every
        parameter and buffer of the skipped part, the model's class and configuration, and the versions,
        threads and device the computation ran with (any of them can change the last bits). None (no
        store) when a weight is offloaded (`meta`: accelerate's device map keeps its bytes elsewhere)."""
        named = self._prefix_tensors()
        if any(t.is_meta for _, t in named):
            return None
        if self._identity is None:
            digest = hashlib.sha1()
            config = text_config(self.model)
            about = {"class": type(self.model).__name__, "k": self.k, "torch": torch.__version__,
                     "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                     "attn": getattr(config, "_attn_implementation", None),
                     "config": {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
                     if hasattr(config, "to_dict") else None}  # fmt: skip
            digest.update(json.dumps(about, sort_keys=True, default=str).encode())
            for name, t in named:
                digest.update(f"{name}{tuple(t.shape)}{t.dtype}{t.device.type}".encode())
                digest.update(_tensor_bytes(t))
            self._identity = digest.hexdigest()[:20]
        return self._identity

    @staticmethod
    def _digest(bucket: tuple, tensors: dict[str, Tensor]) -> str:
        digest = hashlib.sha1(repr(bucket).encode())
        for name, t in tensors.items():
            digest.update(name.encode())
            digest.update(_tensor_bytes(t))
        return digest.hexdigest()

    def _prefix_hooked(self) -> str | None:
        from torch.nn.modules import module as torch_module

        glob = (
            *torch_module._global_forward_hooks.values(),
            *torch_module._global_forward_pre_hooks.values(),
        )
        if any(_ours(h) for h in glob):
            return "global hook"
        last = self.layers[self.k]
        for m in self.prefix:
            if m is self.body:
                continue  # its pre-hooks run before the key is taken, its forward hooks after everything
            if _hooked(m, forward=m is not last):
                return "hook before the hook layer"
        return None

    def _prefix_tensors(self) -> list[tuple[str, Tensor]]:
        """(name, tensor) of every parameter and buffer of the skipped part, in module order."""
        return [(name, t) for m in self.prefix for name, t in (*m._parameters.items(), *m._buffers.items())
                if t is not None]  # fmt: skip

    def _check_weights(self) -> None:
        def version(t: Tensor) -> int:
            try:
                return t._version
            except RuntimeError:  # inference tensors keep no version counter
                return -1

        signature = tuple((id(t), t.data_ptr(), version(t)) for _, t in self._prefix_tensors())
        if self._signature is not None and signature != self._signature:
            self._identity = None  # the store's name for these weights is recomputed when next needed
            if self._entries:
                self.stats.invalidations += 1
                self.clear()
        self._signature = signature

    def _store(self, key: tuple, out) -> None:
        bucket, tensors, digest = key
        if not torch.is_tensor(out):
            self.stats.bypasses["layer output is not a tensor"] += 1
            return
        if digest is not None and self.store.put(self.identity(), digest, out):
            self.stats.disk_writes += 1
        size = out.numel() * out.element_size() + sum(t.numel() * t.element_size() for t in tensors.values())
        if self.stats.bytes + size > self.max_bytes:
            self.stats.over_cap += 1
            return
        self._entries.setdefault(bucket, []).append(({n: t.clone() for n, t in tensors.items()}, out.clone()))
        self.stats.entries += 1
        self.stats.bytes += size


_MISSING = object()
_ACTIVE: dict[int, HookLayerCache] = {}
"""id(model) and id(body) -> the cache installed on them."""


def active_cache(model: nn.Module) -> HookLayerCache | None:
    """The installed cache of `model` (or of its decoder body), if any."""
    return _ACTIVE.get(id(model))


def score_all_instead(model: nn.Module, touched_frac: float) -> bool:
    """Should a sweep score every question instead of only the `touched_frac` a hook touches
    (`eval.suite.Reuse`)? With a cache, a batch seen before costs only the layers after the hook (plus the
    output head, paid either way), while a subset of it is a new batch and costs the whole model: score all
    once the touched share passes the layers-after share + 0.10. Both are exact; scoring all is moreover
    bit-identical to a full evaluation of the point."""
    cache = active_cache(model)
    if cache is None or cache.k < 0:
        return False
    n = len(cache.layers)
    return touched_frac > (n - 1 - cache.k) / n + 0.10


@contextmanager
def hook_layer_cache(
    model: nn.Module,
    hook_name: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    enabled: bool = True,
    store: LayerStore | None = None,
) -> Iterator[HookLayerCache]:
    """Share the computation up to `hook_name`'s layer between forwards of the same inputs inside the block
    (see the module docstring), and with `store` across runs. `enabled=False` yields an idle cache (all
    counters 0): one call site for `--hook-cache/--no-hook-cache`."""
    cache = HookLayerCache(model, hook_name, max_bytes=max_bytes, store=store if enabled else None)
    if enabled:
        cache.install()
    try:
        yield cache
    finally:
        cache.restore()
        cache._entries.clear()  # free the memory; the counters keep the last sizes for the caller
        if enabled:
            log.info("hook-layer cache at %s: %s", hook_name, cache.stats.as_dict())
