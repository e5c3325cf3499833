"""Map growth checked that no read transaction of the process was open, then ran the
writer's checkpoint (milliseconds: an fdatasync), then remapped -- outside the lock that
readers are counted under. A snapshot or point read that began during that checkpoint had
the map moved under it. The count is now checked again, and the map remapped, under the
lock every read transaction begins under: such a reader makes the growth refuse, as one
open before it always did, and the map stays where the reader's pointers are."""
from __future__ import annotations

import pytest

import ngstore
from ngstore.kv import KV

MAP = 4 << 20


def test_a_reader_begun_during_the_growth_checkpoint_makes_it_refuse(tmp_path):
    path = str(tmp_path / "s")
    ngstore.open(path, map_size=MAP).close()
    kv = KV(path, readonly=False, map_size=MAP)
    try:
        kv.pin()
        begun = []
        kv.before_grow = lambda: begun.append(kv.begin_read())  # a reader arrives meanwhile
        size = int(kv.env.info()["map_size"])
        with pytest.raises(ngstore.NgStoreError, match="cannot grow while 1 snapshot"):
            kv._grow()
        assert int(kv.env.info()["map_size"]) == size, "the map was remapped under an open reader"
        assert begun[0].get(b"no such key") is None  # the reader's transaction still works
        kv.end_read(begun.pop())
        kv.before_grow = None
        kv._grow()  # with no reader open it grows
        assert int(kv.env.info()["map_size"]) == 2 * size
    finally:
        kv.unpin()
        kv.close()
