"""The README's example runs as printed and shows what it says: a reflex is learned from
the events it writes, and the fast path then answers with the better action."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "README.md")


def test_the_readme_example_learns_a_reflex_and_answers_from_it(tmp_path: Any) -> None:
    with open(README) as f:
        text = f.read()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    assert '"/tmp/demo"' in code
    code = code.replace('"/tmp/demo"', repr(str(tmp_path / "demo")))
    r = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    first, pattern, hit = r.stdout.splitlines()
    assert first.startswith("42 ")
    assert pattern.startswith("Pattern(") and "better=0x0001, worse=0x0002" in pattern
    assert pattern.endswith(" 1")                    # one reflex consolidated
    assert hit == "0.5 1.0"                          # action 1's vector, full similarity
