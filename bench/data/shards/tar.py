"""Reading a tar shard: its samples as {"__key__", field: bytes}, grouped from the members' headers."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeGuard

from bench.data.cards import DatasetError
from bench.data.shards.decode import IMAGE_EXTS


@dataclass
class Hole:
    """A sample that could not be read; dropped from its batch and reported."""

    where: str


def _split_name(name: str) -> tuple[str, str]:
    """webdataset naming: the key is the path up to the first dot of the file name, the rest the field."""
    d, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def _complete(sample: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    return sample is not None and "cls" in sample and any(e in sample for e in IMAGE_EXTS)


class _NotPlainUstar(Exception):
    """A member the fast reader does not parse (pax / GNU long-name headers): use tarfile instead."""


def _ustar_members(f: Any, want: Any) -> Iterator[tuple[str, bytes | None]]:
    """(name, data) of the regular files of a plain USTAR tar, reading headers by hand.

    What `ltbench prepare` writes (USTAR, integer mtime) costs ~5 us per member this way against ~100 us
    through tarfile's generic header parsing (BENCHMARKS.md). The checksum of every header is verified,
    as tarfile does; a short read is a torn file. `want(name)` False: the data is seeked over (None).
    """
    while True:
        hdr = f.read(512)
        if len(hdr) < 512:
            if hdr.strip(b"\0"):
                raise tarfile.ReadError("unexpected end of data (torn header)")
            return                                         # end of file without end-of-archive blocks
        if hdr == bytes(512):
            return                                         # end-of-archive marker
        if hdr[124] & 0x80:
            raise _NotPlainUstar()                         # base-256 size (GNU, > 8 GiB members)
        try:
            chksum = int(hdr[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
            size = int(hdr[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            raise tarfile.InvalidHeaderError("bad number in header") from None  # type: ignore[attr-defined]
        unsigned = sum(hdr) - sum(hdr[148:156]) + 256
        if chksum != unsigned:
            if chksum == unsigned - 2 * sum(b for b in hdr if b > 127):
                raise _NotPlainUstar()                     # a signed checksum (old tars): tarfile takes it
            raise tarfile.InvalidHeaderError("bad checksum")  # type: ignore[attr-defined]
        kind = hdr[156:157]
        if kind not in (b"0", b"\0", b"5"):
            raise _NotPlainUstar()                         # pax, GNU long names, links: tarfile handles them
        try:
            name = hdr[0:100].split(b"\0", 1)[0].decode("utf-8")
            if hdr[257:262] == b"ustar" and hdr[345]:
                name = hdr[345:500].split(b"\0", 1)[0].decode("utf-8") + "/" + name
        except UnicodeDecodeError:
            raise _NotPlainUstar() from None               # tarfile decodes other encodings
        padded = -(-size // 512) * 512
        if kind == b"5":
            f.seek(padded, os.SEEK_CUR)
            continue
        if want(name):
            data = f.read(size)
            if len(data) < size:
                raise tarfile.ReadError("unexpected end of data")
            f.seek(padded - size, os.SEEK_CUR)
            yield name, data
        else:
            f.seek(padded, os.SEEK_CUR)
            yield name, None


def _tarfile_members(f: Any, want: Any) -> Iterator[tuple[str, bytes | None]]:
    """The same from Python's tarfile: any tar format (pax, GNU)."""
    tf = tarfile.open(fileobj=f, mode="r:")
    for info in tf:
        if info.isreg():
            if want(info.name):
                fobj = tf.extractfile(info)
                assert fobj is not None
                yield info.name, fobj.read()
            else:
                yield info.name, None


def _members(f: Any, want: Any) -> Iterator[tuple[str, bytes | None]]:
    """(name, data or None) of the regular files from f's position: the hand parser, else tarfile."""
    start, seen = f.tell(), 0
    try:
        for m in _ustar_members(f, want):
            seen += 1
            yield m
    except _NotPlainUstar:
        # restart with tarfile, passing over the members already seen
        f.seek(start)
        for i, m in enumerate(_tarfile_members(f, want)):
            if i >= seen:
                yield m


def shard_spans(path: str) -> tuple[list[tuple[int, int]], str | None]:
    """(start, end) byte span of each sample of a tar shard, in file order, from its headers alone, and what
    stopped the scan early (None: the whole file was read).

    A sample's span runs from the first header of its first member to the padded end of its last one, so
    `read_span` parses it as a small tar of its own (random access: bench.data.shards.access). A span that
    would end past the end of the file, or a last sample without its label or image (a torn file), is left out.
    A pax global header (none in what `ltbench prepare` writes) stays outside every span: its fields would be
    lost to a sample read alone.
    """
    spans: list[tuple[int, int]] = []
    last_key: str | None = None
    fields: set[str] = set()

    def add(name: str, start: int, end: int) -> None:
        nonlocal last_key, fields
        key, ext = _split_name(name)
        if key == last_key:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
            last_key, fields = key, set()
        fields.add(ext)

    def whole() -> bool:
        return "cls" in fields and any(x in fields for x in IMAGE_EXTS)

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            try:
                members = _ustar_members(f, lambda _: False)
                while True:
                    start = f.tell()
                    try:
                        name, _ = next(members)
                    except StopIteration:
                        break
                    add(name, start, f.tell())
            except _NotPlainUstar:
                # pax / GNU headers: tarfile knows each member's first header (info.offset) and its data's end
                f.seek(0)
                spans.clear()
                last_key, fields = None, set()
                for info in tarfile.open(fileobj=f, mode="r:"):
                    if info.isreg():
                        add(info.name, info.offset, info.offset_data + -(-info.size // 512) * 512)
    except (tarfile.TarError, EOFError, OSError) as e:
        # the sample being scanned may lack the members after the damage (as read_shard, keep it only if whole)
        return (spans if whole() else spans[:-1]), f"{type(e).__name__}: {e}"
    if spans and spans[-1][1] > size:
        return spans[:-1], "the file ends inside its last sample"
    if spans and not whole():
        return spans[:-1], "its last sample has no label or no image (the file ends between its members)"
    return spans, None


def read_span(f: Any, start: int, end: int) -> dict[str, Any]:
    """The sample whose members fill bytes start .. end of the open shard f, as {"__key__", field: bytes}."""
    f.seek(start)
    data = f.read(end - start)
    if len(data) < end - start:
        raise tarfile.ReadError("unexpected end of data")
    sample: dict[str, Any] = {}
    for name, payload in _members(io.BytesIO(data), lambda _: True):
        key, ext = _split_name(name)
        if sample.setdefault("__key__", key) != key:
            raise tarfile.ReadError(f"members of two samples ({sample['__key__']}, {key}) in one span")
        sample[ext] = payload
    if not sample:
        raise tarfile.ReadError("no member")
    return sample


def read_shard(path: str, skip: int, count: int, on_error: str) -> Iterator[dict[str, Any] | Hole]:
    """Samples skip .. skip+count-1 of a tar shard as {"__key__", field: bytes}, in file order.

    Members are grouped by key from their headers; the file is opened seekable, so skipped samples
    cost only their headers (their data is seeked over). Plain USTAR (what `ltbench prepare` writes) is
    parsed by hand, anything else by tarfile. A truncated or unreadable tar raises a DatasetError naming
    the shard and the last intact key; with on_error=skip it yields one Hole per sample it could not reach.
    """
    produced, k, last_good = 0, -1, None
    current: dict[str, Any] | None = None

    def want(name: str) -> bool:
        # called before the data is read: is this member part of a sample we yield? (k and current are
        # read at call time: the sample being grouped, which a new key would follow)
        new_sample = current is None or _split_name(name)[0] != current["__key__"]
        return k + new_sample >= skip

    try:
        # a local file only: never an opener that interprets the name (webdataset's gopen runs "pipe:...")
        with open(path, "rb") as f:
            for name, data in _members(f, want):
                key, ext = _split_name(name)
                if current is None or key != current["__key__"]:
                    if current is not None and k >= skip:
                        yield current
                        produced += 1
                        last_good = current["__key__"]
                        if produced == count:
                            return
                    k += 1
                    current = {"__key__": key}
                if k >= skip and data is not None:
                    current[ext] = data
            if current is not None and k >= skip and produced < count:
                yield current
                produced += 1
                last_good = current["__key__"]
    except (tarfile.TarError, EOFError, OSError) as e:
        # The sample being read may still be whole (the damage starts at the next one).
        if k >= skip and produced < count and _complete(current):
            yield current
            produced += 1
            last_good = current["__key__"]
        if produced == count:
            return
        where = f"shard {path} after key {last_good}" if last_good else f"shard {path}"
        if on_error != "skip":
            raise DatasetError(f"{where}: unreadable tar ({type(e).__name__}: {e})") from None
        for _ in range(count - produced):
            yield Hole(f"{where}: unreadable tar")
        return
    if produced < count:
        where = f"shard {path} after key {last_good}"
        if on_error != "skip":
            raise DatasetError(f"{where}: ends after {skip + produced} samples, "
                               f"the manifest says at least {skip + count}")
        for _ in range(count - produced):
            yield Hole(f"{where}: missing samples")
