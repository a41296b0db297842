"""trtexec's per-layer precision flags, ``--layerPrecisions`` and ``--layerOutputTypes``: written
(:func:`layer_precisions_arg`) and read back as trtexec reads them (:func:`parse_layer_precisions_arg`).

Example::

    layer_precisions_arg({"*": "fp16", "/head/MatMul": "fp32"})  # '--layerPrecisions=*:fp16,/head/MatMul:fp32'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

TRTEXEC_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8", "int32", "int64", "bool", "uint8", "int4")
PRECISION_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16",
                     "bfloat16": "bf16"}


def layer_precisions_arg(mapping: Mapping[str, str | Sequence[str]], flag: str = "--layerPrecisions") -> str:
    """One argv element for trtexec: ``--layerPrecisions=*:fp16,name:fp32``.

    Grammar (trtexec --help, TensorRT samples/common/sampleOptions.cpp): ``spec ::= layerName":"
    precision[","spec]``, read left to right with later entries winning, ``*`` the default for
    unlisted layers. trtexec splits the value at every ``,`` first (no escape exists). Then, in
    10.x, a pair holding single quotes must hold exactly two, and the name is what they enclose
    (``'a:b':fp32``); without quotes, and in 8.x, the name is everything before the *last* ``:``,
    with single quotes removed. So a name holding ``:`` is written in single quotes, which both
    readings take as the same name; a name holding ``,`` or ``'`` (or an empty name) cannot be
    expressed: ValueError naming it. Precisions: fp32 fp16 bf16 int8 fp8 int32 int64 bool uint8
    int4. For ``flag="--layerOutputTypes"`` a value may be a list, one type per output, joined by
    ``+``. Both need ``--precisionConstraints=obey|prefer`` and a weakly typed build (TensorRT <=
    10.x). ``*`` is written first so explicit names override it. The result is one argv element:
    quote it for a shell (``shlex.quote``), since names may hold spaces or ``"``.

    >>> layer_precisions_arg({"/enc/MatMul:0": "fp32", "*": "fp16"})
    "--layerPrecisions=*:fp16,'/enc/MatMul:0':fp32"
    """
    if flag not in ("--layerPrecisions", "--layerOutputTypes"):
        raise ValueError(f"unknown trtexec flag {flag!r}")
    items = sorted(mapping.items(), key=lambda kv: kv[0] != "*")
    parts = []
    for name, value in items:
        if not name or "," in name or "'" in name:
            why = "an empty name" if not name else "trtexec splits at every ',' and reads ' as a quote"
            raise ValueError(f"trtexec {flag} cannot name layer {name!r} ({why}); set its precision through "
                             "the TensorRT Python API instead")
        values = [value] if isinstance(value, str) else list(value)
        if flag == "--layerPrecisions" and len(values) != 1:
            raise ValueError(f"--layerPrecisions takes one precision per layer, got {value!r} for {name!r}")
        try:
            types = "+".join(_trtexec_precision(v) for v in values)
        except ValueError as exc:
            raise ValueError(f"layer {name!r}: {exc}") from None
        parts.append(f"'{name}':{types}" if ":" in name else f"{name}:{types}")
    return f"{flag}={','.join(parts)}"


def parse_layer_precisions_arg(text: str) -> dict[str, str]:
    """The inverse of :func:`layer_precisions_arg`, read as trtexec 10.x reads it (value or whole
    arg): split at ``,``; a pair with two single quotes names what they enclose, else the name is
    everything before the last ``:``."""
    if text.startswith("--"):
        text = text.partition("=")[2]
    out: dict[str, str] = {}
    for part in text.split(","):
        quoted = part.split("'")
        if len(quoted) == 3 and quoted[2].startswith(":"):
            out[quoted[0] + quoted[1]] = quoted[2][1:]
            continue
        if len(quoted) != 1:
            raise ValueError(f"layer precision {part!r}: trtexec expects two single quotes or none")
        name, sep, value = part.rpartition(":")
        if not sep:
            raise ValueError(f"no ':' in layer precision {part!r}")
        out[name] = value
    return out


def _trtexec_precision(value: str) -> str:
    v = PRECISION_ALIASES.get(value.strip().lower(), value.strip().lower())
    if v not in TRTEXEC_PRECISIONS:
        raise ValueError(f"trtexec knows no precision {value!r} (one of {', '.join(TRTEXEC_PRECISIONS)})")
    return v
