"""``ngstore.open(path, readonly=True, map_size=..., max_readers=...)`` ignored both options
and opened LMDB with the defaults (1 TiB of address space, 126 reader slots): a reader in a
process under an address-space limit could not open a store at all ("Cannot allocate
memory"), whatever ``map_size`` it asked for. Found by the corruption campaign, whose
children run under such a limit."""
from __future__ import annotations

import ngstore


def test_a_read_only_handle_maps_what_it_was_asked_to(tmp_path):
    path = str(tmp_path / "s")
    with ngstore.open(path, map_size=64 << 20) as s:
        s.put_tokens(ngstore.Token.create_batch(10))
    with ngstore.open(path, readonly=True, map_size=48 << 20) as r:
        assert r._kv.env.info()["map_size"] == 48 << 20
        assert r.count() == 10
