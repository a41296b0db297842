"""TensorRT's editable timing cache (10.8+ and 11.x): read which tactic each timing-cache key got,
and force another one, as NVIDIA's sampleEditableTimingCache does. tensorrt is imported lazily.

The cache's keys come from the VERBOSE build log (``trt_parse.parse_autotune_log``), which maps each
network op to its key. The pure parts (``valid_entries``, ``tactic_hash_value``, ``forced_value``)
run and are tested without TensorRT; the rest needs it (../shared/notes/TENSORRT.md).

Example::

    engine, cache = build_engine("model.onnx", editable_timing_cache=True, verbose_log_path="build.log")
    records = parse_autotune_log(Path("build.log").read_text())      # op -> timing-cache key, tactic
    cache_entries(cache)                                             # {key: (tactic hash, ms)}
    cache = force_tactics(cache, {records[0].key: records[0].tactics[1].tactic_hash})
    engine2, _ = build_engine("model.onnx", timing_cache=cache, editable_timing_cache=True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from bisector.backends.tensorrt import builder_flag, import_trt, quiet_logger
from bisector.backends.trt_parse import is_timing_key
from bisector.errors import UserError

INVALID_TACTIC_HASH = 2**64 - 1  # TimingCacheValue::kINVALID_TACTIC_HASH
FORCED_TIMING_MS = 1.0  # what sampleEditableTimingCache writes for a forced tactic with no timing


class EditableCache:
    """An ITimingCache opened from bytes by a config with EDITABLE_TIMING_CACHE set; keeps the builder
    and config that own it alive. ``cache_entries``/``force_tactic`` take it, a raw ITimingCache or bytes."""

    def __init__(self, data: bytes = b""):
        trt = import_trt()
        self.builder = trt.Builder(quiet_logger(trt))
        self.config = self.builder.create_builder_config()
        self.config.set_flag(builder_flag(trt, "EDITABLE_TIMING_CACHE"))
        self.cache = self.config.create_timing_cache(bytes(data))

    def serialize(self) -> bytes:
        return bytes(self.cache.serialize())


def _itiming_cache(cache):
    if isinstance(cache, (bytes, bytearray, memoryview)):
        cache = EditableCache(bytes(cache))
    return cache.cache if isinstance(cache, EditableCache) else cache


def cache_entries(cache) -> dict[str, tuple[int, float]]:
    """``{key text: (tactic hash, ms)}`` for every valid entry (``queryKeys``/``query``; entries whose
    ``tacticHash`` is 2**64-1 are invalid and skipped). Keys are strings: TimingCacheKey has no hash."""
    cache = _itiming_cache(cache)
    rows = []
    for key in cache.queryKeys():
        value = cache.query(key)
        rows.append((str(key), value.tacticHash, value.timingMSec))
    return valid_entries(rows)


def valid_entries(rows: Iterable[tuple[str, int, float]]) -> dict[str, tuple[int, float]]:
    """``{key text, lower case: (tactic hash, ms)}`` from ``(key text, tacticHash, timingMSec)`` rows,
    without the invalid entries (hash 2**64-1). Pure.

    >>> valid_entries([("0xAB", 7, 0.5), ("0xcd", INVALID_TACTIC_HASH, 1.0)])
    {'0xab': (7, 0.5)}
    """
    return {str(k).lower(): (int(h), float(ms)) for k, h, ms in rows if int(h) != INVALID_TACTIC_HASH}


def tactic_hash_value(tactic: int | str) -> int:
    """A tactic hash as ``TimingCacheValue`` takes it, from an int or the VERBOSE log's hex text
    (``"0x665ded9abbf88"``); UserError outside 0 .. 2**64-2 (2**64-1 marks an invalid entry). Pure."""
    try:
        value = int(tactic, 16) if isinstance(tactic, str) else int(tactic)
    except ValueError:
        raise UserError(f"not a tactic hash: {tactic!r}", hint="expected hex text such as 0x665ded9abbf88") from None
    if not 0 <= value < INVALID_TACTIC_HASH:
        raise UserError(f"tactic hash {tactic!r} is out of range", hint="a 64-bit value below 2**64-1")
    return value


def forced_value(old_hash: int, old_ms: float, tactic: int | str) -> tuple[int, float]:
    """``(tactic hash, ms)`` to write when forcing ``tactic`` over the entry ``(old_hash, old_ms)``: the
    entry's timing is kept when it is valid, else ``FORCED_TIMING_MS`` (as sampleEditableTimingCache
    does). Pure.

    >>> forced_value(5, 0.25, "0x10"), forced_value(INVALID_TACTIC_HASH, -1.0, 16)
    ((16, 0.25), (16, 1.0))
    """
    ms = float(old_ms)
    if int(old_hash) == INVALID_TACTIC_HASH or not math.isfinite(ms) or ms < 0:
        ms = FORCED_TIMING_MS
    return tactic_hash_value(tactic), ms


def force_tactic(cache, key: str, tactic_hash: int | str) -> bool:
    """Set one entry's tactic (keeping its timing, else 1 ms). False when TensorRT refuses (an unknown
    key or an invalid value). ``key`` is ``"0x"`` + 32 hex digits, as in the VERBOSE log. ``cache`` is an
    ITimingCache or EditableCache (edited in place); for serialized bytes use ``force_tactics``.
    Bad arguments are refused before tensorrt is imported."""
    if isinstance(cache, (bytes, bytearray, memoryview)):
        raise TypeError("force_tactic edits a cache in place: pass an EditableCache, or use force_tactics(bytes)")
    if not is_timing_key(key):
        raise UserError(f"not a timing cache key: {key!r}", hint="expected 0x followed by 32 hex digits")
    tactic_hash_value(tactic_hash)
    trt = import_trt()
    cache = _itiming_cache(cache)
    tkey = trt.TimingCacheKey.parse(key)
    old = cache.query(tkey)
    h, ms = forced_value(old.tacticHash, old.timingMSec, tactic_hash)
    return bool(cache.update(tkey, trt.TimingCacheValue(h, ms)))


def force_tactics(data: bytes, forced: Mapping[str, int | str]) -> bytes:
    """Serialized cache with each ``{key: tactic hash}`` forced; UserError naming a refused key."""
    cache = EditableCache(data)
    for key, tactic in forced.items():
        if not force_tactic(cache, key, tactic):
            raise UserError(f"TensorRT refused tactic {tactic} for timing cache key {key}",
                            hint="the key must already be in the cache (build once with editable_timing_cache)")
    return cache.serialize()
