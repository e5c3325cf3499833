"""Handles a child inherits through ``fork()``.

An LMDB environment, the write-ahead log, the store's locks, its black box and stats page
belong to the process that opened them: LMDB forbids using an environment after fork(),
and a child that wrote the parent's log or ended its read transactions would damage the
parent's store (``docs/api.md``). So in a child every layer turns what it inherited off,
each its own objects, from an ``os.register_at_fork`` hook: ``kv`` its environments (no
transaction of theirs is ever ended there), ``directory`` its locks, ``obs`` its files
and crash hooks, and this module the open stores, which then refuse every call.
"""
from __future__ import annotations

import os
import weakref
from typing import Any

from .errors import StoreClosedError

#: The stores open in this process, weakly (``Store`` adds and removes itself).
_open_stores: weakref.WeakSet[Any] = weakref.WeakSet()


def opened(store: Any) -> None:
    _open_stores.add(store)


def closed(store: Any) -> None:
    _open_stores.discard(store)


def _in_child() -> None:
    for store in list(_open_stores):
        store._inherited()
    _open_stores.clear()


os.register_at_fork(after_in_child=_in_child)


def closed_error(path: str, owner: int) -> StoreClosedError:
    """The error of a call on the closed store at ``path`` opened by process ``owner``: one
    that names the fork when this process is not ``owner``."""
    if owner == os.getpid():
        return StoreClosedError(f"the store {path} is closed")
    return StoreClosedError(
        f"the store {path} was opened by process {owner} and this process ({os.getpid()}) inherited the "
        "handle through fork(): LMDB, the log and the locks cannot be shared across fork(), so it refuses "
        "every call here. Use the store from a process started with the 'spawn' or 'forkserver' method, or "
        "forked before the store was opened")
