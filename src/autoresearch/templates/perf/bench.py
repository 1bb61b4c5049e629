"""The benchmark: how fast tinydiff.unified_diff is, and how much memory it allocates. Protected.

Prints, for the harness:
    time_ms: <median over REPEATS of the CPU time to diff PAIRS file pairs, in milliseconds>
    alloc_kb: <peak of memory allocated by Python (tracemalloc) while diffing one pair, in KB>

The time is the process's CPU time (time.process_time), not wall time: other work on a
shared machine slows a run's wall clock several-fold but barely moves its CPU time, and
tinydiff is single-threaded, so CPU time is its honest cost (the CPU time of child
processes it waited for is added, so offloading work to them does not hide it). Every repeat diffs *fresh*
pairs (a different seed each time), so a cache of earlier results cannot help; inputs are
built before the clock starts. Each result is checked: applying the diff to the old file
must give the new one, or the run fails (exit 1). Whether the script is also the
*shortest* one is the test suite's job (run_tests.py, the `checks` guard).

The memory is measured first, in a fresh process, so a cache that a change builds while
diffing is counted. What tracemalloc cannot see: memory allocated at import time, and
memory outside Python's allocator.
"""

import os
import random
import statistics
import sys
import time
import tracemalloc

import tinydiff

REPEATS = 7
PAIRS = 4
LINES = 300
EDITS = 20

_WORDS = ("value", "index", "items", "result", "config", "buffer", "count", "name", "total", "node")
_SHAPES = ("    {a} = {b}({c})", "    if {a} > {b}:", "        return {a}", "    for {a} in {b}:",
           "        {a}.append({b})", "def {a}_{b}({c}):", "", "    # {a} {b} {c}", "    {a} += 1")


def _line(rng):
    return rng.choice(_SHAPES).format(a=rng.choice(_WORDS), b=rng.choice(_WORDS), c=rng.choice(_WORDS))


def make_pair(seed):
    """An old file of LINES code-like lines and a new one with EDITS small edits."""
    rng = random.Random(seed)
    old = [_line(rng) for _ in range(LINES)]
    new = list(old)
    for _ in range(EDITS):
        k = rng.randrange(len(new))
        size = rng.randint(1, 3)
        kind = rng.random()
        if kind < 0.35:
            new[k:k] = [_line(rng) for _ in range(size)]
        elif kind < 0.7:
            del new[k:k + size]
        else:
            new[k:k + size] = [_line(rng) for _ in range(size)]
    return old, new


def _apply(old, lines):
    """Independent of tinydiff.patch (which the agent may change): apply a unified diff."""
    out, pos = [], 0
    for ln in lines:
        if ln.startswith(("--- ", "+++ ")):
            continue
        if ln.startswith("@@"):
            start, _, length = ln.split()[1][1:].partition(",")
            first = int(start) - 1 if length != "0" else int(start)
            out += old[pos:first]
            pos = first
        elif ln[:1] in (" ", "-"):
            if pos >= len(old) or old[pos] != ln[1:]:
                raise AssertionError(f"the diff does not match line {pos + 1} of the old file")
            if ln[0] == " ":
                out.append(ln[1:])
            pos += 1
        elif ln[:1] == "+":
            out.append(ln[1:])
        else:
            raise AssertionError(f"not a unified diff line: {ln!r}")
    return out + old[pos:]


def _cpu_s():
    children = os.times()
    return time.process_time() + children.children_user + children.children_system


def main():
    old, new = make_pair(10_000)
    tracemalloc.start()
    tinydiff.unified_diff(old, new)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    times = []
    for r in range(REPEATS):
        pairs = [make_pair(r * PAIRS + p) for p in range(PAIRS)]
        t0 = _cpu_s()
        outputs = [tinydiff.unified_diff(a, b) for a, b in pairs]
        times.append(_cpu_s() - t0)
        for (a, b), out in zip(pairs, outputs):
            if _apply(a, out) != b:
                print("error: unified_diff(a, b) applied to a does not give b", file=sys.stderr)
                return 1
    print(f"repeats: {REPEATS}")
    print(f"time_ms: {statistics.median(times) * 1000:.3f}")
    print(f"alloc_kb: {peak / 1024:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
