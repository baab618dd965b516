"""The bytes of a local data file, decompressed by its suffix, and its lines with their places.

Readers work on bytes rather than text so that a problem can be named by line number and by
absolute byte offset (of the decompressed content, for .gz and .zst). A corrupt or truncated
archive is an LlmcError naming the file, never a silently short read: zstandard's stream reader
stops without a word at a truncated frame, so frames are decoded here one at a time and an
unfinished last frame is reported.
"""
import gzip
import os
import re
import zlib
from typing import Iterator, NamedTuple, Optional

from ..errors import LlmcError

CHUNK_BYTES = 1 << 20
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def is_compressed(path) -> bool:
    return os.path.basename(str(path)).lower().endswith((".gz", ".zst"))


def byte_chunks(path) -> Iterator[bytes]:
    """The file's content in chunks, decompressed when its name ends in .gz or .zst."""
    name = os.path.basename(str(path)).lower()
    if name.endswith(".gz"):
        return _gzip_chunks(path)
    if name.endswith(".zst"):
        return _zstd_chunks(path)
    return _plain_chunks(path)


def _open(path):
    try:
        return open(path, "rb")
    except OSError as err:  # permissions, a directory, a vanished file
        raise LlmcError(f"cannot open '{path}': {err.strerror or err}") from err


def _plain_chunks(path):
    with _open(path) as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def _gzip_chunks(path):
    with _open(path) as raw, gzip.GzipFile(fileobj=raw) as f:
        try:
            while chunk := f.read(CHUNK_BYTES):
                yield chunk
        except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
            raise LlmcError(f"'{path}' is not a valid gzip file, or it is cut short "
                            f"({type(err).__name__}: {err}); download or compress it "
                            "again") from err


def _zstd_chunks(path):
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    frame = None  # the frame being decoded; None between frames
    with _open(path) as f:
        try:
            while data := f.read(CHUNK_BYTES):
                while data:  # a chunk may finish one frame and start the next
                    if frame is None:
                        frame = decompressor.decompressobj()
                    out = frame.decompress(data)
                    if out:
                        yield out
                    data, frame = (frame.unused_data, None) if frame.eof else (b"", frame)
        except zstandard.ZstdError as err:
            raise LlmcError(f"'{path}' is not a valid zstandard file ({err}); download or "
                            "compress it again") from err
    if frame is not None:
        raise LlmcError(f"'{path}' ends in the middle of a zstandard frame: the file is cut "
                        "short; download or compress it again")


class Line(NamedTuple):
    number: int  # from 1
    offset: int  # of its first byte in the (decompressed) content
    data: bytes  # without its '\n'


def lines(chunks) -> Iterator[Line]:
    """The '\\n'-separated lines of a chunked byte stream; a final '\\n' starts no line."""
    number, offset, tail = 1, 0, []
    for chunk in chunks:
        parts = chunk.split(b"\n")
        tail.append(parts[0])
        if len(parts) == 1:
            continue
        parts[0] = b"".join(tail)
        for data in parts[:-1]:
            yield Line(number, offset, data)
            number += 1
            offset += len(data) + 1
        tail = [parts[-1]]
    last = b"".join(tail)
    if last:
        yield Line(number, offset, last)


def decode_utf8(data: bytes, path, offset: int = 0, line: Optional[int] = None) -> str:
    """`data` (found at byte `offset` of the file's content) as text; anything but UTF-8 is an
    LlmcError naming the file, the absolute byte offset and the line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        if line is None:
            line = line_of(data, err.start)
        where = f"byte offset {offset + err.start}"
        if is_compressed(path):
            where += " of its decompressed content"
        hint = ""
        if offset + err.start == 0 and data[:2] in UTF16_BOMS:
            hint = " (it starts with a UTF-16 byte-order mark)"
        raise LlmcError(f"'{path}' is not UTF-8 text{hint}: byte 0x{data[err.start]:02x} at "
                        f"{where} (line {line}) cannot be decoded; save the file as "
                        "UTF-8") from None


def line_of(data: bytes, offset: int) -> int:
    """The line (from 1) holding byte `offset` of `data`, counting \\r\\n, \\r and \\n as line
    breaks as Python's universal newlines do."""
    return len(re.findall(rb"\r\n|\r|\n", data[:offset])) + 1
