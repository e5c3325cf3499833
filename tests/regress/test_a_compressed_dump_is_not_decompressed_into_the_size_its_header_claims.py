"""``load_dump`` decompressed a ``.json.zst`` black-box dump with ``decompress()``, which
allocates the content size the zstd frame header declares before decompressing anything: a
dump of a few bytes declaring 900 MB asked for 900 MB (a MemoryError under an
address-space limit; found by the ``blackbox_dump`` fuzz target). It now streams, so what
it allocates follows what the frame really holds."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def _frame(payload: bytes, declared: int) -> bytes:
    """One zstd frame: single segment, an 8-byte content size of ``declared`` (the header
    lies), and ``payload`` in one raw last block (RFC 8878 §3.1.1)."""
    header = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + declared.to_bytes(8, "little")
    block = ((len(payload) << 3) | 1).to_bytes(3, "little")
    return header + block + payload


def test_a_dump_declaring_900_mb_is_read_in_the_memory_it_needs(tmp_path):
    doc = {"events": [{"event_type": "x", "timestamp_us": 1, "data": []}], "stats": {}}
    path = tmp_path / "blackbox-1-1-1.json.zst"
    path.write_bytes(_frame(json.dumps(doc).encode(), 900 << 20))
    code = textwrap.dedent(f"""
        import resource
        from ngstore.obs import blackbox
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + (400 << 20),) * 2)
        try:
            doc = blackbox.load_dump({str(path)!r})
        except ValueError as exc:
            print("refused:", exc)  # a frame whose size does not match its header: fine too
        else:
            assert doc["events"][0]["event_type"] == "x", doc
            print("read")
        """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
