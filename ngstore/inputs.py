"""Turning what callers pass into the arrays the store works on, or a clear error.

Each function accepts the forms the API documents and returns a contiguous numpy array
of the store's own layout; anything else raises :class:`InvalidArgumentError` before
anything is read or written.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import codec
from .connections import as_connection_array
from .errors import InvalidArgumentError
from .ops import CONN_KEY_DTYPE
from .records import MAX_TOKEN_ID, TOKEN_DTYPE
from .tokens import Token, TokenArray


def ids_array(ids: Any) -> np.ndarray:
    """Validated uint32 ids from an int, a sequence of ints or an integer array."""
    if isinstance(ids, (int, np.integer)):
        ids = [ids]
    try:
        a = np.asarray(ids)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"ids must be integers, got {type(ids).__name__}") from exc
    if a.ndim != 1:
        a = a.reshape(-1) if a.ndim == 0 else a
        if a.ndim != 1:
            raise InvalidArgumentError(f"ids must be a 1-D sequence, got shape {a.shape}")
    if a.size == 0:
        return a.astype(np.uint32)
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "O" and all(isinstance(x, (int, np.integer)) for x in a.tolist()):
            a = np.array(a.tolist(), dtype=np.int64)
        else:
            raise InvalidArgumentError(f"ids must be integers, got dtype {a.dtype}")
    if (a.dtype.kind == "i" and a.min() < 0) or a.max() > MAX_TOKEN_ID:
        raise InvalidArgumentError(
            f"ids must be in 0..{MAX_TOKEN_ID}; got values in {int(a.min())}..{int(a.max())}")
    return a.astype(np.uint32, copy=False)


def connection_keys(keys: Any) -> np.ndarray:
    """Connection keys (CONN_KEY_DTYPE, canonical a <= b) from (a, b, type) triples or
    from connections."""
    if isinstance(keys, tuple) and len(keys) == 3 and all(isinstance(k, (int, np.integer)) for k in keys):
        keys = [keys]
    if isinstance(keys, list) and keys and all(isinstance(k, tuple) for k in keys):
        try:
            trip = np.array(keys, dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"bad connection keys: {exc}") from None
        if trip.ndim != 2 or trip.shape[1] != 3:
            raise InvalidArgumentError("connection keys must be (a, b, type) triples")
        a, b, t = trip[:, 0], trip[:, 1], trip[:, 2]
    else:
        arr = as_connection_array(keys)
        a, b, t = arr["token_a"], arr["token_b"], arr["connection_type"]
    ids_array(a)
    ids_array(b)
    if len(t) and (np.min(t) < 0 or np.max(t) > 255):
        raise InvalidArgumentError("connection_type must be in 0..255")
    k = np.zeros(len(a), dtype=CONN_KEY_DTYPE)
    k["token_a"], k["token_b"] = np.minimum(a, b), np.maximum(a, b)
    k["connection_type"] = t
    return k


def state_coords(states: Any) -> np.ndarray:
    """Raw (n, 8, 3) int16 coordinates of states given as 8 floats (the X axes), Tokens,
    Token records or raw coordinates (a new array)."""
    out: np.ndarray
    if isinstance(states, Token):
        out = np.frombuffer(states.to_bytes(), dtype=TOKEN_DTYPE)["coordinates"].reshape(1, 8, 3).copy()
        return out
    if isinstance(states, TokenArray):
        out = np.array(states.data["coordinates"], copy=True)
        return out
    a = np.asarray(states)
    if a.dtype == TOKEN_DTYPE:
        out = np.array(a.reshape(-1)["coordinates"], copy=True)
        return out
    if a.dtype == np.int16 and a.shape[-2:] == (8, 3):
        out = a.reshape(-1, 8, 3).copy()
        return out
    if a.dtype.kind in "fiu" and a.shape[-1:] == (8,):
        a = a.reshape(-1, 8)
        out = np.zeros((a.shape[0], 8, 3), dtype=np.int16)
        out[:, :, 0] = codec.encode_state(a.astype(np.float32))
        return out
    raise InvalidArgumentError(
        f"states must be (n, 8) floats, Token records or (n, 8, 3) int16 coordinates; got "
        f"{getattr(a, 'dtype', type(states))} {getattr(a, 'shape', '')}")
