"""Weight files: the session's own copy of the user's, and each candidate's share of it.

Nothing here ever links to a user's file. ``onnx.load`` (1.23) refuses external data that has more
than one hard link ("potential hardlink attack"), is a symlink, or lies outside the model's
directory, so one link to the user's weight file makes their own model unloadable for as long as
the link exists (after a ``kill -9``, until someone deletes it). A session therefore copies the
user's files once (:func:`own_copy`: a reflink where the file system has them, else
``copy_file_range`` in the kernel), and hard links are only ever made to files the session owns
(:func:`link_files`).

A candidate that a command check may open with ``onnx.load`` gets its own data file instead
(:func:`copy_ranges`): only the byte ranges of the tensors it uses, copied in the kernel with
``os.copy_file_range``. Each tensor starts at an offset aligned as in the session's file
(:func:`align`), so a file system that reflinks on ``copy_file_range`` (XFS, btrfs) shares the
extents instead of copying them; ext4 copies.

What each way costs on a 1 GiB model: ``docs/benchmarks.md``, "weights: what a candidate costs".

Example::

    own_copy(Path("model.onnx.data"), session / "weights" / "model.onnx.data")   # once per session
    offsets = [align(0, 4 << 20), ...]
    copy_ranges(iteration / "polygraphy_debug.onnx.data",
                [(session / "weights" / "model.onnx.data", src_offset, length, offsets[0])])
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

from bisector.errors import UserError

# Tensors of at least ALIGN_FROM_BYTES start on an ALIGN boundary (a file-system block, so extents can
# be shared); smaller ones on SMALL_ALIGN bytes, so a model of many small tensors does not grow.
ALIGN = 4096
SMALL_ALIGN = 64
ALIGN_FROM_BYTES = 64 << 10
# Linux's FICLONE ioctl: the whole file as a reflink (XFS, btrfs; ext4 says EOPNOTSUPP).
FICLONE = 0x40049409
# Buffer of the read/write fallback, where copy_file_range cannot copy (another file system, old kernel).
COPY_CHUNK_BYTES = 8 << 20
# copy_file_range errors that mean "not here", not "failed": the caller copies through a buffer.
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM, errno.ETXTBSY}
PARTIAL_SUFFIX = ".partial"
# A candidate's own data file is its name plus this (polygraphy_debug.onnx.data), beside it.
DATA_SUFFIX = ".data"


def align(offset: int, length: int) -> int:
    """The first offset at or after ``offset`` where a tensor of ``length`` bytes starts.

    >>> align(100, 1 << 20), align(100, 1000), align(4096, 1 << 20)
    (4096, 128, 4096)
    """
    step = ALIGN if length >= ALIGN_FROM_BYTES else SMALL_ALIGN
    return -(-offset // step) * step


def reflink(src_fd: int, dst_fd: int) -> bool:
    """Make ``dst_fd`` share ``src_fd``'s extents (FICLONE); False where the file system cannot."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return True
    except OSError:
        return False


def copy_range(src_fd: int, dst_fd: int, length: int, src_offset: int, dst_offset: int) -> int:
    """Copy ``length`` bytes between open files, in the kernel (``copy_file_range``) or, where it
    cannot, through a buffer. Returns the bytes copied: fewer only when the source ends first."""
    done = 0
    kernel = hasattr(os, "copy_file_range")
    while done < length:
        if kernel:
            try:
                n = os.copy_file_range(src_fd, dst_fd, length - done, src_offset + done, dst_offset + done)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                kernel = False
                continue
        else:
            data = os.pread(src_fd, min(COPY_CHUNK_BYTES, length - done), src_offset + done)
            n = os.pwrite(dst_fd, data, dst_offset + done) if data else 0
        if n == 0:
            break
        done += n
    return done


def copy_ranges(dst: Path, ranges: list[tuple[Path, int, int, int]]) -> int:
    """Write ``dst`` (a new regular file, one link; whatever was there is unlinked first) from ``(source, offset, length, dst_offset)``
    ranges; the gaps between them stay holes. Returns the file's size. A source shorter than a range
    says is a UserError naming it."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():  # never write through a link into another file
        dst.unlink()
    fds: dict[Path, int] = {}
    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    size = 0
    try:
        for src, offset, length, at in ranges:
            if src not in fds:
                fds[src] = os.open(src, os.O_RDONLY)
            got = copy_range(fds[src], out, length, offset, at)
            if got < length:
                raise UserError(f"weight file {src} is truncated: {got} of {length} bytes from offset {offset}")
            size = max(size, at + length)
        os.ftruncate(out, size)
    finally:
        os.close(out)
        for fd in fds.values():
            os.close(fd)
    return size


def clone_file(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst`` as a reflink if the file system can, else in the kernel; returns
    ``"reflink"`` or ``"copy"``. ``dst`` appears whole or not at all (written beside it, then
    renamed), and gets ``src``'s modification time, which :func:`own_copy` compares on resume."""
    st = os.stat(src)
    tmp = dst.with_name(dst.name + PARTIAL_SUFFIX)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        how = "reflink" if reflink(fin.fileno(), fout.fileno()) else "copy"
        if how == "copy" and copy_range(fin.fileno(), fout.fileno(), st.st_size, 0, 0) < st.st_size:
            raise UserError(f"weight file {src} shrank while it was being copied")
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, dst)
    return how


def own_copy(src: Path, dst: Path) -> str:
    """Make ``dst`` the session's own copy of the user's weight file ``src``; returns what was done:
    ``"kept"`` (a copy of the same size and modification time is already there: a resume),
    ``"reflink"`` or ``"copy"``. A ``dst`` that is a link to ``src`` (left by an older bisector) is
    replaced by a copy. ``src`` itself is never written or removed; when ``dst`` *is* ``src`` (the
    weights already lie where the session keeps them), nothing is done (``"same"``)."""
    src, dst = Path(src), Path(dst)
    if os.path.abspath(src) == os.path.abspath(dst):
        return "same"
    if dst.is_symlink() or (dst.exists() and os.path.samefile(src, dst)):
        dst.unlink()
    elif dst.is_file():
        have, want = dst.stat(), src.stat()
        if have.st_size == want.st_size and have.st_mtime_ns == want.st_mtime_ns:
            return "kept"
    return clone_file(src, dst)


def link_files(names: list[str], src_dir: Path, dst_dir: Path) -> None:
    """Make ``src_dir/name`` reachable as ``dst_dir/name`` for each name, for files the *session*
    owns: a hard link (onnxruntime and TensorRT read it; ``onnx.load`` refuses it), else, across
    file systems, a symlink (TensorRT follows it; onnxruntime refuses it), else a copy."""
    src_dir, dst_dir = Path(src_dir).resolve(), Path(dst_dir)
    if src_dir == dst_dir.resolve():
        return
    for name in names:
        src, dst = src_dir / name, dst_dir / name
        if dst.exists() or dst.is_symlink():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            try:
                os.symlink(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
