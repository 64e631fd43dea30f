"""What the uploaded bytes are, decided as they arrive: text or not, and which encoding.

- The first bytes are compared with the signatures of compressed archives and
  binary formats people mistake for CSV (a .csv.gz renamed, an Excel workbook).
- A NUL byte anywhere means binary content: no text encoding a CSV uses has one.
- UTF-8 is validated incrementally. A file that is not valid UTF-8 is decoded as
  Windows-1252 in the WHATWG definition (every byte maps to a character; it is
  a superset of ISO-8859-1), which is what spreadsheet programs in Western
  locales write. The original bytes are kept as uploaded either way.
"""

from __future__ import annotations

import codecs
from typing import Any

from runtime.errors import ServiceError, invalid_argument
from services.dataset import reasons

UTF8 = "utf8"
WINDOWS_1252 = "modelyard-windows-1252"

# What a text file can never start with, and what the user probably sent instead.
_SIGNATURES: list[tuple[bytes, str, str]] = [
    (b"\x1f\x8b", reasons.COMPRESSED_CONTENT, "gzip-compressed; decompress it first"),
    (b"PK\x03\x04", reasons.COMPRESSED_CONTENT, "a ZIP archive (or an .xlsx workbook)"),
    (b"BZh", reasons.COMPRESSED_CONTENT, "bzip2-compressed; decompress it first"),
    (b"\xfd7zXZ\x00", reasons.COMPRESSED_CONTENT, "xz-compressed; decompress it first"),
    (b"\x28\xb5\x2f\xfd", reasons.COMPRESSED_CONTENT, "zstd-compressed; decompress it first"),
    (b"7z\xbc\xaf\x27\x1c", reasons.COMPRESSED_CONTENT, "a 7-Zip archive"),
    (b"\xd0\xcf\x11\xe0", reasons.BINARY_CONTENT, "an Excel .xls workbook; export it as CSV"),
    (b"PAR1", reasons.BINARY_CONTENT, "a Parquet file, not CSV"),
    (b"\xff\xfe\x00\x00", reasons.ENCODING_UNSUPPORTED, "UTF-32 text; save it as UTF-8"),
    (b"\x00\x00\xfe\xff", reasons.ENCODING_UNSUPPORTED, "UTF-32 text; save it as UTF-8"),
    (b"\xff\xfe", reasons.ENCODING_UNSUPPORTED, "UTF-16 text; save it as UTF-8"),
    (b"\xfe\xff", reasons.ENCODING_UNSUPPORTED, "UTF-16 text; save it as UTF-8"),
]
SNIFF_BYTES = 8


def check_signature(head: bytes) -> None:
    """Refuse the upload when its first bytes are those of a known non-CSV format."""
    for signature, reason, what in _SIGNATURES:
        if head.startswith(signature):
            raise invalid_argument(reason, f"the file is not CSV text: it looks like {what}")


def _binary_content() -> ServiceError:
    return invalid_argument(
        reasons.BINARY_CONTENT, "the file is not CSV text: it contains NUL bytes (binary data)"
    )


class ContentInspector:
    """Fed every chunk in order; tells at the end which encoding the text is in."""

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
