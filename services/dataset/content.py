"""What the uploaded bytes are, decided from their content, never from a file name.

- `sniff` looks at the first bytes: gzip, zstd and bzip2 wrap delimited text;
  `PAR1` is Parquet; a ZIP archive may be an XLSX workbook (checked when it is
  opened); formats people mistake for a table (xz, 7-Zip, the old .xls, UTF-32
  text) are refused with a reason saying what the file looks like.
- `DecodedText` turns the bytes of delimited text into what the CSV reader
  takes: decompressed, UTF-16 (recognized by its byte order mark) transcoded
  to UTF-8, and inspected on the way: a NUL byte means binary content, the
  decompressed size is bounded like an upload (a compression bomb stops at the
  limit), and UTF-8 is validated incrementally. Text that is not valid UTF-8 is
  decoded as Windows-1252 in the WHATWG definition (every byte maps to a
  character; a superset of ISO-8859-1), which is what spreadsheet programs in
  Western locales write. The original bytes are kept as uploaded either way.
"""

from __future__ import annotations

import codecs
import io
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from modelyard.dataset.v1 import dataset_pb2
from runtime.errors import ServiceError, invalid_argument, resource_exhausted
from services.dataset import reasons

UTF8 = "utf8"
WINDOWS_1252 = "modelyard-windows-1252"
SNIFF_BYTES = 8
READ_BYTES = 1024 * 1024

Format = dataset_pb2.SourceFormat.Format
Compression = dataset_pb2.SourceFormat.Compression


@dataclass(frozen=True)
class Sniffed:
    format: dataset_pb2.SourceFormat.Format
    compression: dataset_pb2.SourceFormat.Compression = Compression.COMPRESSION_NONE


# What a table can start with, beyond plain text.
_ACCEPTED: list[tuple[bytes, Sniffed]] = [
    (b"\x1f\x8b", Sniffed(Format.FORMAT_DELIMITED_TEXT, Compression.COMPRESSION_GZIP)),
    (b"\x28\xb5\x2f\xfd", Sniffed(Format.FORMAT_DELIMITED_TEXT, Compression.COMPRESSION_ZSTD)),
    (b"BZh", Sniffed(Format.FORMAT_DELIMITED_TEXT, Compression.COMPRESSION_BZIP2)),
    (b"PAR1", Sniffed(Format.FORMAT_PARQUET)),
    (b"PK\x03\x04", Sniffed(Format.FORMAT_XLSX)),
]
# What a table can never start with, and what the user probably sent instead.
_REFUSED: list[tuple[bytes, str, str]] = [
    (b"\xfd7zXZ\x00", reasons.COMPRESSED_CONTENT, "xz-compressed; use gzip, zstd or bzip2"),
    (b"7z\xbc\xaf\x27\x1c", reasons.COMPRESSED_CONTENT, "a 7-Zip archive"),
    (b"PK\x05\x06", reasons.COMPRESSED_CONTENT, "an empty ZIP archive"),
    (b"\xd0\xcf\x11\xe0", reasons.BINARY_CONTENT, "an Excel .xls workbook; save it as .xlsx"),
    (b"\xff\xfe\x00\x00", reasons.ENCODING_UNSUPPORTED, "UTF-32 text; save it as UTF-8"),
    (b"\x00\x00\xfe\xff", reasons.ENCODING_UNSUPPORTED, "UTF-32 text; save it as UTF-8"),
]
_COMPRESSED = {
    Compression.COMPRESSION_GZIP: "gzip",
    Compression.COMPRESSION_ZSTD: "zstd",
    Compression.COMPRESSION_BZIP2: "bz2",
}


def sniff(head: bytes) -> Sniffed:
    """The kind of file whose first bytes are `head`; raises for a known non-table."""
    for signature, reason, what in _REFUSED:
        if head.startswith(signature):
            raise invalid_argument(reason, f"the file is not a table: it looks like {what}")
    for signature, sniffed in _ACCEPTED:
        if head.startswith(signature):
            return sniffed
    return Sniffed(Format.FORMAT_DELIMITED_TEXT)


def _binary_content() -> ServiceError:
    return invalid_argument(
        reasons.BINARY_CONTENT, "the file is not text: it contains NUL bytes (binary data)"
    )


class ContentInspector:
    """Fed every chunk of text in order; tells at the end which encoding it is in."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self.is_utf8 = True

    def update(self, data: bytes) -> None:
        if b"\x00" in data:
            raise _binary_content()
        if not self.is_utf8 or data.isascii():
            return
        try:
            self._utf8.decode(data)
        except UnicodeDecodeError:
            self.is_utf8 = False

    def finish(self) -> None:
        if self.is_utf8:
            try:
                self._utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                self.is_utf8 = False

    @property
    def encoding(self) -> str:
        return UTF8 if self.is_utf8 else WINDOWS_1252


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Watched(io.RawIOBase):
    """A reader that remembers the error its last read raised."""

    def __init__(self, raw: Readable) -> None:
        super().__init__()
        self._raw = raw
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._raw.read(size)
        except BaseException as error:
            self.error = error
            raise


class _Decompressed:
    """The decompressed bytes of a compressed stream (pyarrow's codecs).

    A corrupt or truncated stream is the upload's fault (`COMPRESSION_INVALID`);
    an error reading the compressed bytes themselves is raised as it was.
    """

    def __init__(self, raw: Readable, codec: str, name: str) -> None:
        self._raw = _Watched(raw)
        self._stream = pa.CompressedInputStream(pa.PythonFile(self._raw, mode="r"), codec)
        self._name = name

    def read(self, size: int = -1, /) -> bytes:
        try:
            return bytes(self._stream.read(size if size >= 0 else None))
        except (OSError, pa.ArrowException) as error:
            if self._raw.error is not None:
                raise self._raw.error from None
            raise invalid_argument(
                reasons.COMPRESSION_INVALID,
                f"the {self._name} stream is truncated or corrupt: {str(error)[:160]}",
            ) from None


def decompressed(raw: Readable, compression: dataset_pb2.SourceFormat.Compression) -> Readable:
    codec = _COMPRESSED.get(compression)
    if codec is None:
        return raw
    return _Decompressed(raw, codec, codec.replace("bz2", "bzip2"))


class DecodedText(io.RawIOBase):
    """The text of delimited text upload, ready for the CSV reader, read in pieces.

    `peek(n)` shows the first bytes without consuming them (for the delimiter).
    After the last byte, `encoding` says how the CSV reader must decode it:
    UTF-8, or Windows-1252 for text that is not valid UTF-8. `text_encoding`
    is what the file was written in (UTF-16 is transcoded here).
    """

    def __init__(
        self,
        raw: Readable,
        compression: dataset_pb2.SourceFormat.Compression,
        max_bytes: int,
    ) -> None:
        super().__init__()
        self._compression = compression
        self._source = decompressed(raw, compression)
        self._max_bytes = max_bytes
        self._inspector = ContentInspector()
        self._transcoder: codecs.IncrementalDecoder | None = None
        self._started = False
        self._pending = b""
        self._eof = False
        self.decoded_bytes = 0
        self.text_encoding = "UTF-8"

    def readable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return self._inspector.encoding

    @property
    def finished(self) -> bool:
        return self._eof and not self._pending

    def read(self, size: int = -1) -> bytes:
        if not self._pending:
            self._pending = self._next()
        if size < 0 or size >= len(self._pending):
            data, self._pending = self._pending, b""
        else:
            data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        memoryview(buffer)[: len(data)] = data
        return len(data)

    def peek(self, size: int) -> bytes:
        while len(self._pending) < size and not self._eof:
            self._pending += self._next()
        return self._pending[:size]

    def _next(self) -> bytes:
        """The next piece of text (b"" at the end)."""
        while not self._eof:
            data = self._source.read(READ_BYTES)
            at_end = not data
            if data and not self._started:
                data = self._start(data)
            if self._transcoder is not None:
                data = self._transcode(data, final=at_end)
            if data:
                self._count(data)
            if at_end:
                self._eof = True
                self._inspector.finish()
            if data or at_end:
                return data
        return b""

    def _start(self, data: bytes) -> bytes:
        self._started = True
        if self._compression != Compression.COMPRESSION_NONE:
            if data[:4] == b"PAR1" or data[:4] == b"PK\x03\x04" or sniff_compressed(data):
                raise invalid_argument(
                    reasons.COMPRESSED_CONTENT,
                    "the compressed file holds another archive or a binary file, "
                    "not delimited text; upload that file itself",
                )
            sniff(data)  # refuses UTF-32 and .xls inside the compression too
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            self.text_encoding = "UTF-16LE" if data.startswith(b"\xff\xfe") else "UTF-16BE"
            self._transcoder = codecs.getincrementaldecoder("utf-16")("strict")
        return data

    def _transcode(self, data: bytes, final: bool) -> bytes:
        assert self._transcoder is not None
        try:
            return self._transcoder.decode(data, final=final).encode("utf-8")
        except UnicodeDecodeError:
            raise invalid_argument(
                reasons.ENCODING_UNSUPPORTED,
                "the file starts with a UTF-16 byte order mark but is not valid UTF-16",
            ) from None

    def _count(self, data: bytes) -> None:
        self.decoded_bytes += len(data)
        if self.decoded_bytes > self._max_bytes:
            raise resource_exhausted(
                reasons.UPLOAD_TOO_LARGE,
                f"the decompressed text is larger than the limit of {self._max_bytes} bytes",
                limit_bytes=str(self._max_bytes),
            )
        self._inspector.update(data)


def sniff_compressed(data: bytes) -> bool:
    return any(
        data.startswith(signature) for signature in (b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"BZh")
    )


def describe(sniffed: Sniffed, text_encoding: str, sheet: str = "") -> dataset_pb2.SourceFormat:
    return dataset_pb2.SourceFormat(
        format=sniffed.format,
        compression=sniffed.compression,
        encoding=text_encoding if sniffed.format == Format.FORMAT_DELIMITED_TEXT else "",
        sheet=sheet,
    )


# -- Windows-1252 as WHATWG defines it: the five bytes cp1252 leaves undefined
# decode to the C1 control characters of the same value, so no byte fails. --------

_DECODING_TABLE = "".join(
    chr(byte) if char == "\ufffd" else char
    for byte, char in enumerate(bytes(range(256)).decode("cp1252", errors="replace"))
)


def _decode(data: Any, errors: str = "strict") -> tuple[str, int]:
    return codecs.charmap_decode(data, errors, _DECODING_TABLE)


class _IncrementalDecoder(codecs.IncrementalDecoder):
    def decode(self, input: Any, final: bool = False) -> str:
        return codecs.charmap_decode(input, self.errors, _DECODING_TABLE)[0]


def _search(name: str) -> codecs.CodecInfo | None:
    if name.replace("_", "-") != WINDOWS_1252:
        return None
    return codecs.CodecInfo(
        name=WINDOWS_1252,
        encode=codecs.getencoder("cp1252"),
        decode=_decode,
        incrementaldecoder=_IncrementalDecoder,
    )


codecs.register(_search)
