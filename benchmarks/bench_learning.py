"""Does the IntuitionEngine learn what it should? (issue 14's learning goal)

The task of the issue: 100,000 events over 64 state clusters (states uniform in
[-0.9, 0.9]^8, noise 0.01 around each centre), 4 actions (``event_type`` 1..4); in each
cluster one action (drawn at random) earns reward 1 and the others 0, with reward noise
0.1. Events are written to a store in batches of 1,000 with ``analyze()`` after each, with
the **default configuration** (``learning="accumulate"``) and, on the same events, with the
original's single-sample analysis (``learning="sample"``) for comparison.

After every cycle the fast path is asked about the 64 cluster centres and 6,400 fresh
states (100 per cluster, drawn like the events): answered, answered with the best action,
answered with a worse one. Action a's vector is (0.2 a, 0, ..., 0), so an answer names its
action. The policy's mean reward per cluster is the expected reward of what the fast path
does on the cluster's fresh states: 1 for the best action, 0 for another, 0.25 when it does
not answer (the agent then acts at random); the oracle always takes the best action.

Targets (issue 14): after 100,000 events, >= 95 % of centres and of fresh states answered
with the best action, and none with a worse one. Tables: ``learning.md`` under ``--out``
(and the log). Standalone: ``python benchmarks/bench_learning.py [--out DIR]``.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

import ngstore
from ngstore.analysis import state_bins
from ngstore.experience import new_events

CLUSTERS = 64
ACTIONS = 4
EVENTS = 100_000
BATCH = 1_000
FRESH_PER_CLUSTER = 100
CURVE_AT = (1_000, 2_000, 3_000, 5_000, 7_000, 10_000, 15_000, 20_000, 30_000, 50_000, 75_000, 100_000)


class Task:
    """The clustered task; one generator, so both modes see the same events."""

    def __init__(self, seed: int = 14) -> None:
        self.rng = np.random.default_rng(seed)
        self.centres = self.rng.uniform(-0.9, 0.9, (CLUSTERS, 8)).astype(np.float32)
        self.best = self.rng.integers(1, ACTIONS + 1, CLUSTERS)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        c = self.rng.integers(0, CLUSTERS, n)
        a = self.rng.integers(1, ACTIONS + 1, n)
        ev = new_events(n)
        ev["state"] = self.centres[c] + self.rng.normal(0, 0.01, (n, 8)).astype(np.float32)
        ev["event_type"] = a
        ev["action"][:, 0] = 0.2 * a
        ev["reward_goal"] = (a == self.best[c]) + self.rng.normal(0, 0.1, n)
        ev["timestamp_us"] = np.arange(n) + 1
        return ev, c

    def fresh(self) -> tuple[np.ndarray, np.ndarray]:
        c = np.repeat(np.arange(CLUSTERS), FRESH_PER_CLUSTER)
        return self.centres[c] + self.rng.normal(0, 0.01, (len(c), 8)).astype(np.float32), c


def _score(engine: ngstore.IntuitionEngine, states: np.ndarray, cluster: np.ndarray,
           best: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per state: answered, answered with the cluster's best action."""
    r = engine.try_fast_path_batch(states, with_connections=False)
    action = np.rint(r.action[:, 0] / 0.2).astype(int)
    return r.found, r.found & (action == best[cluster])


def _run_mode(b: Any, task: Task, batches: list[tuple[np.ndarray, np.ndarray]], fresh: np.ndarray,
              fresh_c: np.ndarray, learning: str) -> dict[str, Any]:
    path = b.tmpdir("learning", learning)
    curve = []
    per_cluster_reward = []  # per cycle: (64,) expected reward of the policy on fresh states
    cycle_s = []
    with ngstore.open(path) as s:
        engine = s.intuition(ngstore.IntuitionConfig(learning=learning))
        for i, (ev, _c) in enumerate(batches):
            s.write_events(ev)
            t0 = time.perf_counter()
            report = engine.analyze(rng=np.random.default_rng(i))
            cycle_s.append(time.perf_counter() - t0)
            seen = (i + 1) * BATCH
            ca, cr = _score(engine, task.centres, np.arange(CLUSTERS), task.best)
            fa, fr = _score(engine, fresh, fresh_c, task.best)
            reward = np.where(fr, 1.0, np.where(fa, 0.0, 1.0 / ACTIONS))
            per_cluster_reward.append(np.bincount(fresh_c, reward, CLUSTERS) / FRESH_PER_CLUSTER)
            curve.append({"events": seen, "centres_answered": int(ca.sum()), "centres_right": int(cr.sum()),
                          "centres_wrong": int((ca & ~cr).sum()), "fresh_answered": float(fa.mean()),
                          "fresh_right": float(fr.mean()), "fresh_wrong": int((fa & ~fr).sum()),
                          "policy_reward": float(reward.mean()), "reflexes": len(engine.table or []),
                          "patterns": len(report.patterns)})
        st = engine.stats()
        stats = s.learning_statistics() if learning == "accumulate" else None
    return {"curve": curve, "per_cluster": np.array(per_cluster_reward), "cycle_s": cycle_s, "stats": st,
            "learned": stats}


def run(b: Any) -> None:
    b.log("## learning (issue 14): 64 clusters x 4 actions, 100 cycles of 1,000 events, default configuration")
    task = Task()
    batches = [task.batch(BATCH) for _ in range(EVENTS // BATCH)]
    fresh, fresh_c = task.fresh()
    acc = _run_mode(b, task, batches, fresh, fresh_c, "accumulate")
    smp = _run_mode(b, task, batches, fresh, fresh_c, "sample")

    end = acc["curve"][-1]
    b.record("learning: analyze() per cycle", "ngstore accumulate (default)", EVENTS, "s", acc["cycle_s"],
             note=f"{end['reflexes']} reflexes for {CLUSTERS} clusters")
    b.record("learning: analyze() per cycle", "ngstore sample (the original)", EVENTS, "s", smp["cycle_s"],
             note=f"{smp['curve'][-1]['reflexes']} reflexes")
    b.check("learning", "centres answered with the best action after 100,000 events", end["centres_right"] / CLUSTERS,
            ">=", 0.95, f"{end['centres_right']} of {CLUSTERS}", EVENTS)
    b.check("learning", "fresh cluster states answered with the best action after 100,000 events",
            end["fresh_right"], ">=", 0.95, f"{end['fresh_right']:.1%} of {len(fresh):,}", EVENTS)
    wrong = sum(c["centres_wrong"] + c["fresh_wrong"] for c in acc["curve"])
    b.check("learning", "answers with a worse action, over all 100 cycles", wrong, "<=", 0,
            "centres and fresh states, after every cycle", EVENTS)
    b.check("learning", "original single-sample analysis: centres answered with the best action",
            smp["curve"][-1]["centres_right"] / CLUSTERS, "report", 0,
            f"{smp['curve'][-1]['centres_right']} of {CLUSTERS}, same events", EVENTS)
    text = tables(task, batches, acc, smp)
    for line in text.splitlines():
        b.log(line)
    os.makedirs(b.out, exist_ok=True)
    with open(os.path.join(b.out, "learning.md"), "w") as f:
        f.write(text + "\n")


def tables(task: Task, batches: list[tuple[np.ndarray, np.ndarray]], acc: dict[str, Any],
           smp: dict[str, Any]) -> str:
    """The learning curve and the per-cluster oracle table, as markdown."""
    out = ["**Learning curve** (fast path after each cycle; fresh = 6,400 states, 100 per cluster; "
           "policy reward: 1 best action, 0 another, 0.25 unanswered; the oracle's is 1)\n",
           "| events seen | centres answered | with the best action | with a worse one | fresh answered "
           "| fresh best action | fresh worse | policy reward | reflexes | original (sample): centres answered "
           "/ best | original: policy reward |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for a, s in zip(acc["curve"], smp["curve"], strict=True):
        if a["events"] not in CURVE_AT:
            continue
        out.append(f"| {a['events']:,} | {a['centres_answered']} | {a['centres_right']} | {a['centres_wrong']} | "
                   f"{a['fresh_answered']:.1%} | {a['fresh_right']:.1%} | {a['fresh_wrong']} | "
                   f"{a['policy_reward']:.3f} | {a['reflexes']} | {s['centres_answered']} / {s['centres_right']} | "
                   f"{s['policy_reward']:.3f} |")
    st, learned = acc["stats"], acc["learned"]
    out.append("")
    out.append(f"Accumulate: `reflexes_created` {st['reflexes_created']}, live reflexes {st['total_reflexes']}, "
               f"{learned.cursor.events_counted:,} events in {len(learned)} (bin, action) groups, "
               f"analyze() median {np.median(acc['cycle_s']) * 1e3:.1f} ms per cycle. Original (sample): "
               f"`reflexes_created` {smp['stats']['reflexes_created']}, live {smp['stats']['total_reflexes']}.")

    # -- per cluster: the oracle, the evidence, the policy, and when it got there ----------
    events = np.concatenate([ev for ev, _c in batches])
    cluster = np.concatenate([c for _ev, c in batches])
    reward = events["reward_goal"].astype(np.float64)
    centre_bins = state_bins(task.centres, 4)
    event_bins = state_bins(events["state"], 4)
    shared = np.array([int((centre_bins == centre_bins[k]).sum()) > 1 for k in range(CLUSTERS)])
    pc = acc["per_cluster"]
    reached = np.full(CLUSTERS, -1)
    for k in range(CLUSTERS):
        below = np.flatnonzero(pc[:, k] < 0.95)
        first = (below[-1] + 1) if len(below) else 0
        reached[k] = (first + 1) * BATCH if first < len(pc) else -1
    out.append("")
    out.append("**Per cluster, against the oracle** (the oracle always takes the cluster's best action: its "
               "expected reward is 1, its observed mean reward is shown; learned = the statistics' mean reward of "
               "that action in the centre's bin; policy = expected reward of the fast path on the cluster's fresh "
               "states after 100,000 events (oracle: 1); reached = events after which the policy stayed >= 0.95; "
               "outside = share of the cluster's events outside its centre's bin)\n")
    out.append("| cluster | best action | events | oracle, observed | learned | policy | reached after | outside |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    learned_of = {(int(bb), int(a)): m for bb, a, m in zip(learned.bins, learned.actions, learned.moments,
                                                           strict=True)}
    oracle = np.zeros(CLUSTERS)
    estimate = np.full(CLUSTERS, np.nan)
    for k in range(CLUSTERS):
        mine = cluster == k
        oracle[k] = reward[mine & (events["event_type"] == task.best[k])].mean()
        m = learned_of.get((int(centre_bins[k]), int(task.best[k])))
        if m is not None:
            estimate[k] = float(m["mean"])
        outside = float((event_bins[mine] != centre_bins[k]).mean())
        policy = float(pc[-1, k])
        note = " (shares its bin)" if shared[k] else ""
        est = "—" if np.isnan(estimate[k]) else f"{estimate[k]:.3f}"
        out.append(f"| {k}{note} | {task.best[k]} | {int(mine.sum()):,} | {oracle[k]:.3f} | {est} | {policy:.3f} | "
                   f"{'never' if reached[k] < 0 else f'{reached[k]:,}'} | {outside:.1%} |")
    ok = reached[reached >= 0]
    err = np.abs(estimate - oracle)
    out.append("")
    out.append(f"Clusters whose policy reached 0.95: {len(ok)} of {CLUSTERS}; events needed: "
               f"median {int(np.median(ok)):,}, 90th percentile {int(np.percentile(ok, 90, method='higher')):,}, "
               f"max {int(ok.max()):,}. |learned − observed|: mean {np.nanmean(err[~shared]):.4f}, max "
               f"{np.nanmax(err[~shared]):.4f} over the clusters alone in their bin; "
               f"{int(shared.sum())} centres share a bin with another cluster (no action dominates it: no reflex).")
    return "\n".join(out)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import argparse

    import _harness

    ap = argparse.ArgumentParser(description="issue 14's learning curve")
    ap.add_argument("--out", default="bench-results")
    args = ap.parse_args()
    bench = _harness.Bench(sizes=[EVENTS], repeats=1, quick=False, out=args.out)
    try:
        run(bench)
    finally:
        bench.cleanup()
