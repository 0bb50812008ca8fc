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
from typing import Any

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
            return arrays[value[_ARRAY]]
        if _TYPE in value:
            cls = MESSAGE_TYPES.get(value[_TYPE])
            if cls is None:
                raise CodecError(f"unknown message type {value[_TYPE]!r}")
            kwargs = {k: _restore(v, arrays) for k, v in value.items() if k != _TYPE}
            try:
                return cls(**kwargs)
            except TypeError as exc:
                raise CodecError(f"{value[_TYPE]} fields do not match ({exc})") from None
        return {k: _restore(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, arrays) for v in value]
    return value


def decode(data: bytes) -> Any:
    """The message that :func:`encode` made of ``data``."""
    meta = _header(data).get("__metadata__") or {}
    if "vaefusion_message" not in meta:
        raise CodecError("not a vaefusion message")
    try:
        arrays = st_load(bytes(data))
    except Exception as exc:  # safetensors' own error type for malformed buffers
        raise CodecError(f"message arrays are malformed ({exc})") from None
    return _restore(json.loads(meta["vaefusion_message"]), arrays)


# --------------------------------------------------------------------------- chunks
def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split(data: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    """``data`` in pieces of at most ``size`` bytes (at least one piece)."""
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def join(chunks: list[bytes], expected_digest: str | None = None) -> bytes:
    """Reassemble :func:`split` chunks, checking the digest when one is given."""
    data = b"".join(chunks)
    if expected_digest is not None and digest(data) != expected_digest:
        raise CodecError("message chunks do not match their digest (lost or corrupted)")
    return data
