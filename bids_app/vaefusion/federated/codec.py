"""Messages to bytes and back, without pickle: the safetensors layout plus a JSON description.

A message becomes one safetensors buffer: its arrays as tensors, everything else as JSON in
the header's metadata (arrays are referenced there by name). Decoding parses a JSON header and
raw little-endian arrays, so a message from another party never runs code. Only the types of
:data:`vaefusion.federated.messages.MESSAGE_TYPES` are accepted.

Platforms cap what one message field may hold (NeuroFLAME: 8 MiB inline), so the bytes travel
as :func:`split` chunks of at most :data:`CHUNK_BYTES` each, with a SHA-256 digest that
:func:`join` checks: the 84 MiB of the full-size VAE's weights go as 11 chunks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import types
import typing
from functools import cache
from typing import Any, Union

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from vaefusion.federated.messages import MESSAGE_TYPES

#: Largest chunk of a message that travels as one field (NeuroFLAME's inline limit).
CHUNK_BYTES = 8 * 2**20

_ARRAY = "__array__"
_TYPE = "__type__"


class CodecError(ValueError):
    """Bytes that are not a vaefusion message (corrupt, truncated or of an unknown type)."""


# --------------------------------------------------------------------------- encode
def _flatten(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if MESSAGE_TYPES.get(name) is not type(value):
            raise TypeError(f"{name} is not a registered federated message type")
        out = {_TYPE: name}
        for f in dataclasses.fields(value):
            out[f.name] = _flatten(getattr(value, f.name), arrays)
        return out
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(value)
        return {_ARRAY: key}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("message dicts must have string keys")
        return {k: _flatten(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_flatten(v, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{type(value).__name__} cannot travel in a federated message")


def encode(msg: object) -> bytes:
    """One message as bytes (safetensors buffer with the message description as metadata)."""
    arrays: dict[str, np.ndarray] = {}
    body = _flatten(msg, arrays)
    return st_save(arrays, metadata={"vaefusion_message": json.dumps(body)})


# --------------------------------------------------------------------------- decode
def _header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise CodecError("message too short")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise CodecError("message header runs past its end")
    try:
        return json.loads(data[8:8 + size])
    except json.JSONDecodeError as exc:
        raise CodecError(f"message header is not JSON ({exc})") from None


def _restore(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if _ARRAY in value:
            key = value[_ARRAY]
            if not isinstance(key, str) or key not in arrays:
                raise CodecError(f"message refers to a missing array {str(key)[:40]!r}")
            return arrays[key]
        if _TYPE in value:
            name = value[_TYPE]
            cls = MESSAGE_TYPES.get(name) if isinstance(name, str) else None
            if cls is None:
                raise CodecError(f"unknown message type {str(name)[:40]!r}")
            kwargs = {k: _restore(v, arrays) for k, v in value.items() if k != _TYPE}
            try:
                msg = cls(**kwargs)
            except TypeError as exc:
                raise CodecError(f"{name} fields do not match ({exc})") from None
            _check_fields(msg)
            return msg
        return {k: _restore(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, arrays) for v in value]
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a decoded value has the type a message field declares (the types messages
    use: numbers, strings, arrays, lists, dicts, unions and other messages)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint in (str, np.ndarray):
        return isinstance(value, hint)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items())
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a type no message uses: not checked


def _check_fields(msg: object) -> None:
    """Every field of a decoded message has its declared type (a number where a number is
    declared ...), so that a malformed reply fails here, not deep in the server."""
    hints = _hints(type(msg))
    for f in dataclasses.fields(msg):  # type: ignore[arg-type]
        value = getattr(msg, f.name)
        if not _conforms(value, hints.get(f.name, Any)):
            raise CodecError(f"{type(msg).__name__}.{f.name} is a {type(value).__name__}, "
                             f"not the declared {hints.get(f.name)}")


def decode(data: bytes) -> Any:
    """The message that :func:`encode` made of ``data``; anything else (corrupt, truncated,
    of an unknown type, with a field of the wrong type) raises :class:`CodecError`."""
    try:
        return _decode(data)
    except CodecError:
        raise
    except Exception as exc:  # whatever malformed bytes make the parsers raise
        raise CodecError(f"malformed message ({type(exc).__name__}: {str(exc)[:200]})"
                         ) from None


def _decode(data: bytes) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"a message is bytes, not {type(data).__name__}")
    header = _header(bytes(data))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("vaefusion_message"), str):
        raise CodecError("not a vaefusion message")
    try:
        arrays = st_load(bytes(data))
    except Exception as exc:  # safetensors' own error type for malformed buffers
        raise CodecError(f"message arrays are malformed ({exc})") from None
    try:
        body = json.loads(meta["vaefusion_message"])
    except json.JSONDecodeError as exc:
        raise CodecError(f"message description is not JSON ({exc})") from None
    msg = _restore(body, arrays)
    if not dataclasses.is_dataclass(msg):
        raise CodecError(f"the message is a {type(msg).__name__}, not a vaefusion message")
    return msg


# --------------------------------------------------------------------------- chunks
def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split(data: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    """``data`` in pieces of at most ``size`` bytes (at least one piece)."""
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def join(chunks: list[bytes], expected_digest: str | None = None) -> bytes:
    """Reassemble :func:`split` chunks, checking the digest when one is given."""
    if not isinstance(chunks, list | tuple) or not all(isinstance(c, bytes) for c in chunks):
        raise CodecError("message chunks are not a list of bytes")
    data = b"".join(chunks)
    if expected_digest is not None and digest(data) != expected_digest:
        raise CodecError("message chunks do not match their digest (lost or corrupted)")
    return data
