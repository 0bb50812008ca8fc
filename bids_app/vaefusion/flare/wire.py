"""Messages in and out of NVFlare ``Shareable`` objects: codec bytes in <= 8 MiB chunks."""

from __future__ import annotations

from nvflare.apis.shareable import Shareable

from vaefusion.federated import codec

CHUNKS = "vaefusion_chunks"
DIGEST = "vaefusion_sha256"


def pack(msg: object, shareable: Shareable | None = None) -> tuple[Shareable, int]:
    """``msg`` encoded into ``shareable`` (a new one by default); returns it and its bytes."""
    data = codec.encode(msg)
    out = Shareable() if shareable is None else shareable
    out[CHUNKS] = codec.split(data)
    out[DIGEST] = codec.digest(data)
    return out, len(data)


def unpack(shareable: Shareable) -> tuple[object | None, int]:
    """The message in ``shareable`` and its size, or (None, 0) when it holds none (raises
    :class:`~vaefusion.federated.codec.CodecError` for a corrupt one)."""
    chunks = shareable.get(CHUNKS)
    if chunks is None:
        return None, 0
    data = codec.join(list(chunks), shareable.get(DIGEST))
    return codec.decode(data), len(data)
