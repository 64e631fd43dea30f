"""Protobuf's wire format for a message that is one bytes field, written by hand.

An upload chunk and a ReadDataset response are each one length-delimited
field: the field's tag, the value's length, then its bytes. Built with one
join, a megabyte goes into the message once; a protobuf message and its
serialization would copy it twice more. Such a call's serializer is
`serialized`, which lets these pre-encoded bytes through as they are.
"""

from __future__ import annotations

from google.protobuf.message import Message

LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    encoded = bytearray()
    while value >= 0x80:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def field_tag(field_number: int) -> bytes:
    """A length-delimited field's tag: its number and wire type."""
    return varint(field_number << 3 | LENGTH_DELIMITED)


def field_head(field_number: int, length: int) -> bytes:
    """What comes before a length-delimited field's `length` bytes on the wire."""
    return field_tag(field_number) + varint(length)


def serialized(message: Message | bytes) -> bytes:
    """A call's request or response serializer: encoded bytes pass through as they are."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()
