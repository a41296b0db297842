"""What a candidate's weights cost per iteration, on a model of about 1 GiB of external weights.

    .venv/bin/python bench/weights_cost.py [--mib 1024] [--repeat 3] [--dir DIR] [--markdown FILE]

The model is a chain of MatMuls with random fp32 weights in one external file (generated under a
temporary directory in ``--dir``, deleted at the end). A session's copy of that file stands in for
``SESSION/weights``; the candidate is the first half of the chain, as a bisect's first probe is.
Each way of giving the candidate its weights is timed ``--repeat`` times in a fresh iteration
directory (median), then the directory is removed:

- **hard link**: the candidate's .onnx plus a hard link to the session's file (bisector's
  ``--weights link``);
- **full copy**: ``shutil.copyfile`` of the session's file (sendfile / copy_file_range);
- **reflink**: ``FICLONE`` of the session's file (XFS, btrfs; ext4 answers EOPNOTSUPP);
- **range copy**: ``io.save(weights="file")``: ``os.copy_file_range`` of only the candidate's
  tensors into ``polygraphy_debug.onnx.data`` (what ``--weights auto`` gives a command check from
  64 MiB on);
- **embed**: ``io.save(weights="embed")``: the candidate's tensors in the protobuf;
- **beside the session file**: the candidate's .onnx written into the session's weights directory
  (zero copy, but not where a check looks for it).

Columns: ms per iteration (page cache, as bisector writes; median), ms including ``fsync`` of what
was written (the disk's share), bytes written (``/proc/self/io`` write_bytes, what the kernel
dirtied), and whether ``onnx.load`` (with external data) and onnxruntime accept the candidate. The
session's one-time copy of the user's file (``weights.own_copy``) and its resume (nothing copied)
are timed too. Numbers depend on the disk and the page cache: the run prints where it ran.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bisector.model import io as mio  # noqa: E402
from bisector.model import weights as wfiles  # noqa: E402

LAYERS = 32
DATA_NAME = "model.onnx.data"
ARTIFACT = "polygraphy_debug.onnx"


def write_model(directory: Path, mib: int) -> tuple[Path, int]:
    """``directory/model.onnx`` + ``model.onnx.data``: LAYERS MatMuls of D x D random fp32 weights,
    D chosen so the weights take about ``mib`` MiB. Written tensor by tensor (never all in memory)."""
    d = int((mib * 2**20 / LAYERS / 4) ** 0.5)
    rng = np.random.default_rng(0)
    inits, nodes, offset = [], [], 0
    with open(directory / DATA_NAME, "wb") as f:
        for i in range(LAYERS):
            w = rng.standard_normal((d, d), dtype=np.float32) / np.float32(d ** 0.5)
            f.write(w.tobytes())
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[d, d])
            for key, value in (("location", DATA_NAME), ("offset", str(offset)), ("length", str(w.nbytes))):
                t.external_data.add(key=key, value=value)
            t.data_location = TensorProto.EXTERNAL
            inits.append(t)
            offset += w.nbytes
            nodes.append(helper.make_node("MatMul", [f"h{i}" if i else "x", f"w{i}"], [f"h{i + 1}"], name=f"mm{i}"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, d])],
                              [helper.make_tensor_value_info(f"h{LAYERS}", TensorProto.FLOAT, [1, d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, str(directory / "model.onnx"))
    return directory / "model.onnx", d


def first_half(model: onnx.ModelProto) -> onnx.ModelProto:
    """The chain's first half: what a bisect's first candidate is."""
    half = LAYERS // 2
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.node[half:]
    del m.graph.initializer[half:]
    out = helper.make_tensor_value_info(f"h{half}", TensorProto.FLOAT, list(_dims(model.graph.output[0])))
    del m.graph.output[:]
    m.graph.output.append(out)
    return m


def _dims(vi) -> list[int]:
    return [d.dim_value for d in vi.type.tensor_type.shape.dim]


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def fsync_tree(directory: Path) -> None:
    for p in directory.rglob("*"):
        if p.is_file() and not p.is_symlink():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def accepts(path: Path, d: int) -> tuple[str, str]:
    """Whether onnx.load (with its external data) and onnxruntime take the file; a yes from
    onnx.load says how long it took (what a check that calls it pays anyway)."""
    try:
        t0 = time.perf_counter()
        onnx.load(str(path))
        by_onnx = f"yes ({(time.perf_counter() - t0) * 1e3:.0f} ms)"
    except Exception as exc:  # onnx raises ValidationError and others
        by_onnx = "no: hard link" if "hard link" in str(exc) else f"no: {str(exc)[:60]}"
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        sess.run(None, {"x": np.ones((1, d), np.float32)})
        by_ort = "yes"
    except Exception as exc:
        by_ort = f"no: {str(exc)[:60]}"
    return by_onnx, by_ort


def ways(cand: onnx.ModelProto, weights: Path):
    """(name, function(iteration dir, i) -> path of the candidate or an error text)."""
    src = weights / DATA_NAME

    def hard_link(it: Path, i: int):
        return mio.save(cand, it / ARTIFACT, weights_from=weights, weights="link")

    def full_copy(it: Path, i: int):
        it.mkdir(parents=True, exist_ok=True)
        (it / ARTIFACT).write_bytes(cand.SerializeToString())
        shutil.copyfile(src, it / DATA_NAME)
        return it / ARTIFACT

    def reflink(it: Path, i: int):
        import fcntl

        it.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as fin, open(it / DATA_NAME, "wb") as fout:
            try:
                fcntl.ioctl(fout.fileno(), wfiles.FICLONE, fin.fileno())
            except OSError as exc:
                return f"FICLONE: {os.strerror(exc.errno)} ({exc.errno})"
        (it / ARTIFACT).write_bytes(cand.SerializeToString())
        return it / ARTIFACT

    def range_copy(it: Path, i: int):
        return mio.save(cand, it / ARTIFACT, weights_from=weights, weights="file")

    def embed(it: Path, i: int):
        return mio.save(cand, it / ARTIFACT, weights_from=weights, weights="embed")

    def beside(it: Path, i: int):
        path = weights / f"cand-{i}.onnx"
        path.write_bytes(cand.SerializeToString())
        return path

    return [("hard link (--weights link)", hard_link), ("full copy (shutil.copyfile)", full_copy),
            ("reflink (FICLONE)", reflink), ("range copy, own .data (auto, command check, >= 64 MiB)", range_copy),
            ("embed in the protobuf", embed), ("candidate .onnx beside the session file", beside)]


def measure(name, fn, base: Path, weights: Path, repeat: int, d: int) -> dict:
    times, synced, written, path, err = [], [], [], None, None
    for i in range(repeat):
        it = base / f"iter_{i}"
        if it.exists():
            shutil.rmtree(it)
        before, t0 = write_bytes(), time.perf_counter()
        result = fn(it, i)
        t1 = time.perf_counter()
        if isinstance(result, str):
            err = result
            break
        target_dir = Path(result).parent
        fsync_tree(target_dir if target_dir != weights else it)
        t2 = time.perf_counter()
        times.append((t1 - t0) * 1e3)
        synced.append((t2 - t0) * 1e3)
        written.append(write_bytes() - before)
        path = Path(result)
        if i < repeat - 1:
            _clean(it, path, weights)
    row = {"way": name, "error": err}
    if path is not None:
        row |= {"ms": statistics.median(times), "ms_fsync": statistics.median(synced),
                "bytes": statistics.median(written)}
        row["onnx_load"], row["onnxruntime"] = accepts(path, d)
        _clean(base / f"iter_{repeat - 1}", path, weights)
    return row


def _clean(it: Path, path: Path, weights: Path) -> None:
    if path.parent == weights:
        path.unlink()
    shutil.rmtree(it, ignore_errors=True)


def session_copy(user: Path, weights: Path) -> list[dict]:
    """The session's one copy of the user's file, then a resume that finds it there."""
    rows = []
    for label in ("session set-up: own_copy of the user's file", "resume: own_copy finds the copy"):
        before, t0 = write_bytes(), time.perf_counter()
        how = wfiles.own_copy(user / DATA_NAME, weights / DATA_NAME)
        t1 = time.perf_counter()
        fsync_tree(weights)
        t2 = time.perf_counter()
        rows.append({"way": f"{label} ({how})", "ms": (t1 - t0) * 1e3, "ms_fsync": (t2 - t0) * 1e3,
                     "bytes": write_bytes() - before, "onnx_load": "", "onnxruntime": "", "error": None})
    return rows


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| way | ms | ms incl. fsync | MiB written | onnx.load | onnxruntime |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['way']} | - | - | - | {r['error']} | |")
        else:
            lines.append(f"| {r['way']} | {r['ms']:.1f} | {r['ms_fsync']:.1f} | {r['bytes'] / 2**20:.1f} | "
                         f"{r['onnx_load']} | {r['onnxruntime']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024, help="weights of the generated model (MiB)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where the temporary model goes (its file system counts)")
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bisector-weights-bench-", dir=args.dir))
    try:
        user, weights = tmp / "user", tmp / "session" / "weights"
        user.mkdir()
        path, d = write_model(user, args.mib)
        rows = session_copy(user, weights)
        model = mio.load(path)
        cand = first_half(model)
        used = mio.external_bytes(cand)
        rows += [measure(name, fn, tmp / "session" / "iterations", weights, args.repeat, d)
                 for name, fn in ways(cand, weights)]
        fs = subprocess.run(["df", "-T", str(tmp)], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
        header = (f"{LAYERS} MatMuls of {d}x{d} fp32: {mio.external_bytes(model) / 2**20:.0f} MiB of weights in one "
                  f"file; the candidate (the first {LAYERS // 2}) uses {used / 2**20:.0f} MiB. {fs} on "
                  f"{platform.system()} {platform.release()}, median of {args.repeat}; onnx {onnx.__version__}.")
        text = table(rows, header)
        print(text)
        if args.markdown:
            args.markdown.write_text(text + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
