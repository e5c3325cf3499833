"""Shared machinery of the benchmark suite: timing with repeats, medians and spreads,
the environment, cache dropping, and the JSON / markdown / PNG outputs.

Every figure is a :class:`Measurement` (workload, system, size, unit, samples); every
ratio a target asks for is a :class:`Check` (value, target, PASS/MISS, what was divided
by what). ``run_all.py`` owns one :class:`Bench` and hands it to each ``bench_*.run``.

Conventions
-----------
* ``size`` is the number of tokens (or reflexes, or states) the workload works on.
* Units are per item where the work scales (``ns/token``), else per operation.
* ``higher_is_better`` marks throughput units (``commits/s``, ``MB/s``); ratios are
  always reported as *ngstore cost ÷ peer cost* (> 1: ngstore is slower), whatever the unit.
* The spread is the inter-quartile range when there are ≥ 4 samples, else min–max.
"""
from __future__ import annotations

import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: The system that is the physical limit of each workload (ratios "ngstore ÷ limit").
LIMITS: dict[str, str] = {}


# ---------------------------------------------------------------------------- records

@dataclass
class Measurement:
    workload: str
    system: str
    size: int
    unit: str
    samples: list[float]
    higher_is_better: bool = False
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples)) if self.samples else math.nan

    @property
    def spread(self) -> tuple[float, float, str]:
        s = sorted(self.samples)
        if len(s) >= 4:
            q = np.percentile(s, [25, 75])
            return float(q[0]), float(q[1]), "IQR"
        return float(s[0]), float(s[-1]), "min–max"

    def cost(self) -> float:
        """A lower-is-better number for ratios."""
        m = self.median
        return 1.0 / m if self.higher_is_better and m else m


@dataclass
class Check:
    area: str
    name: str
    value: float
    op: str          # "<=" or ">="
    threshold: float
    detail: str
    size: int = 0
    skipped: str = ""

    @property
    def passed(self) -> bool:
        if self.skipped or math.isnan(self.value) or self.op == "report":
            return False
        return self.value <= self.threshold if self.op == "<=" else self.value >= self.threshold

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "SKIP"
        if self.op == "report":
            return "INFO"
        return "PASS" if self.passed else "MISS"


# ---------------------------------------------------------------------------- the bench

class Bench:
    """State shared by every benchmark module of one run."""

    def __init__(self, *, sizes: list[int], repeats: int, quick: bool, out: str,
                 tmp_root: str | None = None, log: Callable[[str], None] = print) -> None:
        self.sizes = sizes
        self.repeats = repeats
        self.quick = quick
        self.out = out
        self.root = tempfile.mkdtemp(prefix="ngbench-", dir=tmp_root or "/tmp")
        self.results: list[Measurement] = []
        self.checks: list[Check] = []
        self.notes: list[str] = []
        self.env: dict[str, Any] = {}
        self.cache: dict[Any, Any] = {}
        self.log = log
        self.t_start = time.perf_counter()
        self.module_seconds: dict[str, float] = {}

    @property
    def max_size(self) -> int:
        return max(self.sizes)

    def tmpdir(self, *parts: str) -> str:
        p = os.path.join(self.root, *parts)
        if os.path.exists(p):
            shutil.rmtree(p)
        os.makedirs(p)
        return p

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def record(self, workload: str, system: str, size: int, unit: str, samples: Iterable[float],
               *, higher_is_better: bool = False, note: str = "", **extra: float) -> Measurement:
        m = Measurement(workload, system, int(size), unit, [float(x) for x in samples],
                        higher_is_better, note, {k: float(v) for k, v in extra.items()})
        self.results.append(m)
        lo, hi, kind = m.spread
        ex = "".join(f", {k} {v:.4g}" for k, v in m.extra.items())
        self.log(f"  {workload:<22} {system:<34} n={size:<9} {m.median:12.4g} {unit:<10}"
                 f" [{kind} {lo:.4g}–{hi:.4g}]{ex}{'  ' + note if note else ''}")
        return m

    def get(self, workload: str, system: str, size: int | None = None) -> Measurement | None:
        found = [m for m in self.results if m.workload == workload and m.system == system
                 and (size is None or m.size == size)]
        if not found:
            return None
        return max(found, key=lambda m: m.size) if size is None else found[-1]

    def check(self, area: str, name: str, value: float, op: str, threshold: float, detail: str,
              size: int = 0, skipped: str = "") -> Check:
        c = Check(area, name, float(value), op, float(threshold), detail, size, skipped)
        self.checks.append(c)
        self.log(f"  CHECK [{c.verdict}] {name}: {value:.3g} (target {op} {threshold:g}) — {detail}"
                 + (f" ({skipped})" if skipped else ""))
        return c

    def ratio_check(self, area: str, name: str, workload: str, num: str, den: str, op: str,
                    threshold: float, size: int | None = None, invert: bool = False) -> Check:
        """A check on cost(num) ÷ cost(den) (or the inverse), both from this run."""
        a, b = self.get(workload, num, size), self.get(workload, den, size)
        if a is None or b is None:
            return self.check(area, name, math.nan, op, threshold, f"{num} ÷ {den}",
                              size or 0, skipped="not measured in this run")
        r = b.cost() / a.cost() if invert else a.cost() / b.cost()
        detail = (f"{a.system} {a.median:.4g} {a.unit} vs {b.system} {b.median:.4g} {b.unit}"
                  f" at n={a.size}")
        return self.check(area, name, r, op, threshold, detail, a.size)


# ---------------------------------------------------------------------------- timing

def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def repeat(fn: Callable[[], Any], repeats: int, *, setup: Callable[[], Any] | None = None,
           scale: float = 1.0, warmup: bool = False, budget_s: float | None = None) -> list[float]:
    """Times ``fn()`` ``repeats`` times (``setup()`` before each, not timed). Returns the
    seconds of each run times ``scale`` (e.g. ``1e9 / n`` for ns per item). With
    ``budget_s`` stops early (after at least 2 runs) once the budget is spent."""
    if warmup:
        if setup:
            setup()
        fn()
    out: list[float] = []
    t0 = time.perf_counter()
    for _ in range(repeats):
        if setup:
            setup()
        gc.collect()
        gc.disable()
        try:
            dt, _ = timed(fn)
        finally:
            gc.enable()
        out.append(dt * scale)
        if budget_s is not None and len(out) >= 2 and time.perf_counter() - t0 > budget_s:
            break
    return out


def alternated(fns: dict[str, Callable[..., Any]], repeats: int, *, args: tuple[Any, ...] = (),
               scale: float = 1.0, warmup: bool = False) -> dict[str, list[float]]:
    """:func:`repeat` of several functions in rounds, one run of each per round, so that
    all of them see the same state of the machine: these VMs run a process in phases of
    tens of ms whose speed differs by up to 1.7x, and runs made one system after the other
    could land on different ones. Round i of every list is one round. ``args`` are passed
    to every call."""
    if warmup:
        for fn in fns.values():
            fn(*args)
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            gc.disable()
            try:
                t = time.perf_counter()
                fn(*args)
                dt = time.perf_counter() - t
            finally:
                gc.enable()
            out[name].append(dt * scale)
    return out


def per_call_ns(fn: Callable[[], Any], number: int, repeats: int) -> list[float]:
    """ns per call of ``fn``, over ``number`` calls, ``repeats`` times."""
    import timeit

    return [t / number * 1e9 for t in timeit.repeat(fn, number=number, repeat=repeats)]


# ---------------------------------------------------------------------------- files

def disk_bytes(path: str) -> tuple[int, int]:
    """(allocated bytes (st_blocks), apparent bytes) of a file or directory tree."""
    if os.path.isfile(path):
        st = os.stat(path)
        return st.st_blocks * 512, st.st_size
    alloc = apparent = 0
    for d, _dirs, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(d, f))
            alloc += st.st_blocks * 512
            apparent += st.st_size
    return alloc, apparent


def _cached_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1])
    return 0


def drop_file_cache(paths: Iterable[str]) -> tuple[bool, float]:
    """fsync + POSIX_FADV_DONTNEED on every file under ``paths``. Returns (worked, MB the
    page cache shrank by, read from /proc/meminfo -- a rough but independent witness).
    Pages mapped by a live mapping are not dropped: close stores first."""
    if not hasattr(os, "posix_fadvise"):
        return False, 0.0
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            files += [os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs]
        elif os.path.exists(p):
            files.append(p)
    before = _cached_kib()
    ok = True
    for f in files:
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                os.fsync(fd)
            except OSError:
                pass
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            ok = False
        finally:
            os.close(fd)
    return ok, (before - _cached_kib()) / 1024


def fadvise_works(root: str) -> tuple[bool, str]:
    """Writes 32 MB, drops it, and checks /proc/meminfo shrank: says whether 'cold' is cold."""
    p = os.path.join(root, "fadvise-probe")
    with open(p, "wb") as f:
        f.write(os.urandom(1 << 20) * 32)
        f.flush()
        os.fsync(f.fileno())
    with open(p, "rb") as f:
        while f.read(1 << 22):
            pass
    ok, mb = drop_file_cache([p])
    os.unlink(p)
    worked = ok and mb > 16
    verdict = "worked" if worked else "did NOT work"
    return worked, f"POSIX_FADV_DONTNEED {verdict} (page cache shrank {mb:.0f} MB of 32 MB)"


# ---------------------------------------------------------------------------- environment

def _fs_of(path: str) -> str:
    path = os.path.realpath(path)
    best = ("", "?", "?")
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, fstype, opts = line.split()[:4]
            mnt = mnt.replace("\\040", " ")
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                best = (mnt, fstype, f"{dev} {opts}")
    return f"{best[1]} on {best[0]} ({best[2]})"


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return "not installed"


def fsync_probe(root: str, n: int = 200) -> float:
    """Median µs of write(64 B) + fdatasync: tells whether fsync is real (eatmydata, tmpfs...)."""
    p = os.path.join(root, "fsync-probe")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"\0" * (1 << 20))
    os.fsync(fd)
    ts = []
    for i in range(n):
        t = time.perf_counter()
        os.pwrite(fd, b"x" * 64, (i * 64) % (1 << 20))
        os.fdatasync(fd)
        ts.append(time.perf_counter() - t)
    os.close(fd)
    os.unlink(p)
    return statistics.median(ts) * 1e6


def environment(bench: Bench) -> dict[str, Any]:
    import sqlite3

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from ngstore import _native

        c_ext = f"loaded: {_native._ngcore.__file__} (ABI {_native.lib.ng_abi_version()})"
    except Exception as exc:  # pragma: no cover - reported, not fatal
        c_ext = f"NOT loaded ({exc!r})"
    fsync_us = fsync_probe(bench.root)
    fadv_ok, fadv_text = fadvise_works(bench.root)
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "versions": {m: _version(m) for m in ("ngstore", "numpy", "lmdb", "cffi", "matplotlib",
                                              "rocksdict", "prometheus_client", "opentelemetry-sdk")},
        "sqlite": sqlite3.sqlite_version,
        "data_dir": bench.root,
        "filesystem": _fs_of(bench.root),
        "c_extension": c_ext,
        "fsync": f"on (write 64 B + fdatasync median {fsync_us:.0f} µs)" if fsync_us > 20 else
                 f"probably a NO-OP (write + fdatasync median {fsync_us:.1f} µs)",
        "fsync_us": fsync_us,
        "page_cache_drop": fadv_text,
        "page_cache_drop_works": fadv_ok,
        "eatmydata": ("LD_PRELOAD=" + os.environ.get("LD_PRELOAD", "")
                      if "eatmydata" in os.environ.get("LD_PRELOAD", "") else "no"),
        "sizes": bench.sizes,
        "repeats": bench.repeats,
        "mode": "quick" if bench.quick else "full",
    }
    bench.env = env
    return env


def print_environment(env: dict[str, Any], log: Callable[[str], None] = print) -> None:
    log("# environment")
    for k, v in env.items():
        if k in ("fsync_us", "page_cache_drop_works"):
            continue
        if isinstance(v, dict):
            v = ", ".join(f"{a} {b}" for a, b in v.items())
        log(f"  {k:<14} {v}")


# ---------------------------------------------------------------------------- outputs

def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    a = abs(v)
    if a >= 1e5:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _spread_text(m: Measurement) -> str:
    lo, hi, _kind = m.spread
    return f"{_fmt(lo)}–{_fmt(hi)}"


def write_json(bench: Bench, path: str) -> None:
    doc = {
        "environment": bench.env,
        "notes": bench.notes,
        "module_seconds": bench.module_seconds,
        "results": [asdict(m) | {"median": m.median} for m in bench.results],
        "checks": [asdict(c) | {"verdict": c.verdict} for c in bench.checks],
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=str)


def markdown(bench: Bench, img_prefix: str = "") -> str:
    lines: list[str] = []
    env = bench.env
    lines.append("### Environment\n")
    for k in ("date", "cpu", "cores", "memory_gib", "kernel", "python", "sqlite", "filesystem",
              "c_extension", "fsync", "page_cache_drop", "mode", "sizes", "repeats"):
        if k in env:
            lines.append(f"- **{k}**: {env[k]}")
    lines.append("- **versions**: " + ", ".join(f"{a} {b}" for a, b in env.get("versions", {}).items()))
    lines.append("")
    npass = sum(c.verdict == "PASS" for c in bench.checks)
    nmiss = sum(c.verdict == "MISS" for c in bench.checks)
    lines.append(f"### Targets ({npass} PASS, {nmiss} MISS, "
                 f"{sum(c.verdict == 'SKIP' for c in bench.checks)} SKIP; INFO = reported, no target)\n")
    lines.append("| area | figure | measured | target | verdict | from (same run) |")
    lines.append("|---|---|---:|---|---|---|")
    for c in bench.checks:
        tgt = "—" if c.op == "report" else f"{c.op} {c.threshold:g}"
        lines.append(f"| {c.area} | {c.name} | {_fmt(c.value)} | {tgt} | "
                     f"**{c.verdict}** | {c.detail}{' — ' + c.skipped if c.skipped else ''} |")
    lines.append("")
    workloads: list[str] = []
    for m in bench.results:
        if m.workload not in workloads:
            workloads.append(m.workload)
    lines.append("### Workloads at the largest size (medians; ratio = ngstore cost ÷ that system's cost)\n")
    for w in workloads:
        ms = [m for m in bench.results if m.workload == w]
        top = max(m.size for m in ms)
        # every system at its largest size (peers may be capped lower)
        by_sys: dict[str, Measurement] = {}
        for m in ms:
            if m.system not in by_sys or m.size > by_sys[m.system].size:
                by_sys[m.system] = m
        ng = next((m for s, m in by_sys.items() if s.startswith("ngstore")), None)
        lim = LIMITS.get(w)
        lines.append(f"**{w}** (n = {top:,}{'; limit: ' + lim if lim else ''})\n")
        lines.append("| system | n | median | unit | spread | ngstore ÷ this | note |")
        lines.append("|---|---:|---:|---|---|---:|---|")
        for s, m in by_sys.items():
            same = bench.get(w, ng.system, m.size) if ng else None
            ratio = same.cost() / m.cost() if same and m.cost() else math.nan
            extra = "; ".join(f"{k} {_fmt(v)}" for k, v in m.extra.items())
            note = "; ".join(x for x in (m.note, extra) if x)
            shown = _fmt(ratio) + "×" if s != (ng.system if ng else "") else "1"
            lines.append(f"| {'**' + s + '**' if s == lim else s} | {m.size:,} | {_fmt(m.median)} | {m.unit} | "
                         f"{_spread_text(m)} ({m.spread[2]}) | {shown} | {note} |")
        lines.append("")
    # scaling table: per-item cost of every system at every size
    lines.append("### Scaling (median per item at each size)\n")
    for w in workloads:
        ms = [m for m in bench.results if m.workload == w]
        sizes = sorted({m.size for m in ms})
        if len(sizes) < 2:
            continue
        systems = list(dict.fromkeys(m.system for m in ms))
        lines.append(f"**{w}** ({ms[0].unit})\n")
        lines.append("| system | " + " | ".join(f"{s:,}" for s in sizes) + " |")
        lines.append("|---|" + "---:|" * len(sizes))
        for s in systems:
            row = []
            for n in sizes:
                m = bench.get(w, s, n)
                row.append(_fmt(m.median) if m else "")
            lines.append(f"| {s} | " + " | ".join(row) + " |")
        lines.append("")
    if bench.notes:
        lines.append("### Notes from the run\n")
        lines += [f"- {n}" for n in bench.notes]
        lines.append("")
    return "\n".join(lines)


def _shrink_png(path: str) -> None:
    """Palette PNG (64 colours): the plots are flat colours, so this keeps them < 150 KB."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            small = im.convert("RGB").quantize(colors=64)
        small.save(path, optimize=True)
    except Exception:  # pillow missing: keep the RGBA file
        pass


def load_json(path: str) -> Bench:
    """A Bench rebuilt from a results.json (to redraw plots and tables without re-running)."""
    with open(path) as f:
        doc = json.load(f)
    env = doc["environment"]
    b = Bench(sizes=env.get("sizes", []), repeats=env.get("repeats", 0), quick=env.get("mode") == "quick",
              out=os.path.dirname(path), log=lambda _l: None)
    shutil.rmtree(b.root, ignore_errors=True)
    b.env, b.notes, b.module_seconds = env, doc.get("notes", []), doc.get("module_seconds", {})
    fields_m = set(Measurement.__dataclass_fields__)
    fields_c = set(Check.__dataclass_fields__)
    b.results = [Measurement(**{k: v for k, v in r.items() if k in fields_m}) for r in doc["results"]]
    b.checks = [Check(**{k: v for k, v in c.items() if k in fields_c}) for c in doc["checks"]]
    return b


def plots(bench: Bench, outdir: str) -> list[str]:
    """bars.png (every workload, largest size, log axis) and scaling.png (cost per item vs n)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        bench.notes.append("matplotlib missing: no plots (pip install matplotlib)")
        return []
    workloads = list(dict.fromkeys(m.workload for m in bench.results))
    made: list[str] = []
    if not workloads:
        return made

    # -- bars (workloads with at least two systems)
    workloads = [w for w in workloads if len({m.system for m in bench.results if m.workload == w}) >= 2]
    ncol = 4
    nrow = math.ceil(len(workloads) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.9 * nrow), squeeze=False)
    for ax, w in zip(axes.flat, workloads, strict=False):
        by_sys: dict[str, Measurement] = {}
        for m in bench.results:
            if m.workload == w and (m.system not in by_sys or m.size > by_sys[m.system].size):
                by_sys[m.system] = m
        names = list(by_sys)
        vals = [by_sys[s].median for s in names]
        lo = [by_sys[s].median - by_sys[s].spread[0] for s in names]
        hi = [by_sys[s].spread[1] - by_sys[s].median for s in names]
        colors = ["#c0392b" if s.startswith("ngstore") else
                  ("#2c3e50" if s == LIMITS.get(w) else "#95a5a6") for s in names]
        y = np.arange(len(names))
        ax.barh(y, vals, xerr=[np.maximum(lo, 0), np.maximum(hi, 0)], color=colors, capsize=2)
        ax.set_yticks(y, [f"{s} (n={by_sys[s].size:.0e})" for s in names], fontsize=6)
        ax.invert_yaxis()
        if all(v > 0 for v in vals) and max(vals) / max(min(vals), 1e-12) > 20:
            ax.set_xscale("log")
        unit = by_sys[names[0]].unit if names else ""
        ax.set_title(f"{w} [{unit}]" + (" ↑better" if by_sys[names[0]].higher_is_better else ""),
                     fontsize=8)
        ax.tick_params(axis="x", labelsize=6)
    for ax in list(axes.flat)[len(workloads):]:
        ax.axis("off")
    fig.suptitle("ngstore (red) vs peers (grey) and the limit (dark); medians with spread", fontsize=9)
    fig.tight_layout()
    p = os.path.join(outdir, "bars.png")
    fig.savefig(p, dpi=72)
    plt.close(fig)
    _shrink_png(p)
    made.append(p)

    # -- scaling
    scal = [w for w in workloads if len({m.size for m in bench.results if m.workload == w}) >= 2]
    if scal:
        nrow = math.ceil(len(scal) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.8 * nrow), squeeze=False)
        for ax, w in zip(axes.flat, scal, strict=False):
            systems = list(dict.fromkeys(m.system for m in bench.results if m.workload == w))
            for s in systems:
                ms = sorted((m for m in bench.results if m.workload == w and m.system == s),
                            key=lambda m: m.size)
                if not ms:
                    continue
                style = "-o" if s.startswith("ngstore") else ("--s" if s == LIMITS.get(w) else ":.")
                ax.plot([m.size for m in ms], [m.median for m in ms], style, label=s, ms=3,
                        lw=1.6 if s.startswith("ngstore") else 1)
            ax.set_xscale("log")
            ax.set_yscale("log")
            unit = next(m.unit for m in bench.results if m.workload == w)
            ax.set_title(f"{w} [{unit}]", fontsize=8)
            ax.tick_params(labelsize=6)
            ax.legend(fontsize=5, loc="best")
        for ax in list(axes.flat)[len(scal):]:
            ax.axis("off")
        fig.suptitle("cost per item vs work size (log-log)", fontsize=9)
        fig.tight_layout()
        p = os.path.join(outdir, "scaling.png")
        fig.savefig(p, dpi=72)
        plt.close(fig)
        _shrink_png(p)
        made.append(p)
    return made
