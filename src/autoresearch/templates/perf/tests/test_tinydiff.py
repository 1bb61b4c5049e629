"""The guard: what tinydiff must keep doing, however fast it gets. Protected from the agent.

Plain functions with plain asserts: `python run_tests.py` runs them with the standard
library alone, and pytest runs them too. Where several shortest edit scripts exist the
tests check properties (valid, shortest, removals first), never one particular script.
"""

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tinydiff import PatchError, diff, patch, stats, unified_diff  # noqa: E402


def lcs_length(a, b):
    """Reference: the length of a longest common subsequence (quadratic, obviously right)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def apply_ops(ops):
    return [line for t, line in ops if t != "+"], [line for t, line in ops if t != "-"]


def check_script(a, b):
    ops = diff(a, b)
    old, new = apply_ops(ops)
    assert old == a, "the kept and removed lines must be exactly a, in order"
    assert new == b, "the kept and added lines must be exactly b, in order"
    kept = sum(1 for t, _ in ops if t == " ")
    assert kept == lcs_length(a, b), f"not a shortest script: keeps {kept}, could keep {lcs_length(a, b)}"
    for (t1, _), (t2, _) in zip(ops, ops[1:]):
        assert not (t1 == "+" and t2 == "-"), "within a run of changes, removals come first"
    for t, _ in ops:
        assert t in (" ", "-", "+")
    return ops


def random_pair(rng, n, alphabet, edits):
    a = [rng.choice(alphabet) for _ in range(n)]
    b = list(a)
    for _ in range(edits):
        kind = rng.random()
        k = rng.randrange(len(b) + 1)
        if kind < 0.4 or not b:
            b.insert(k, rng.choice(alphabet))
        elif kind < 0.8:
            del b[min(k, len(b) - 1)]
        else:
            b[min(k, len(b) - 1)] = rng.choice(alphabet)
    return a, b


# ---------------------------------------------------------------- diff: the edit script

def test_equal_inputs_keep_everything():
    a = ["x", "y", "z"]
    assert diff(a, list(a)) == [(" ", "x"), (" ", "y"), (" ", "z")]


def test_empty_inputs():
    assert diff([], []) == []
    assert diff([], ["a", "b"]) == [("+", "a"), ("+", "b")]
    assert diff(["a", "b"], []) == [("-", "a"), ("-", "b")]


def test_one_line_changed():
    assert diff(["a", "b", "c"], ["a", "B", "c"]) == [(" ", "a"), ("-", "b"), ("+", "B"), (" ", "c")]


def test_insert_and_delete_at_the_ends():
    assert diff(["b", "c"], ["a", "b", "c", "d"]) == [("+", "a"), (" ", "b"), (" ", "c"), ("+", "d")]
    assert diff(["a", "b", "c", "d"], ["b", "c"]) == [("-", "a"), (" ", "b"), (" ", "c"), ("-", "d")]


def test_completely_different():
    assert diff(["a", "b"], ["c", "d"]) == [("-", "a"), ("-", "b"), ("+", "c"), ("+", "d")]


def test_inputs_are_not_modified_and_any_sequence_works():
    a, b = ("a", "b", "c"), ("c", "b", "a")
    check_script(list(a), list(b))
    assert diff(a, b) == diff(list(a), list(b))
    la, lb = list(a), list(b)
    diff(la, lb)
    assert la == list(a) and lb == list(b)


def test_repeated_lines_are_matched_minimally():
    check_script(["}", "}", "x", "}"], ["}", "x", "}", "}"])
    check_script(["", "", "", "a", ""], ["a", "", "", "", ""])
    check_script(["a"] * 30, ["a"] * 17)


def test_moves_are_a_removal_and_an_addition():
    ops = check_script(["1", "2", "3", "4"], ["2", "3", "4", "1"])
    assert stats(ops) == (1, 1)


def test_whitespace_and_unicode_are_significant():
    ops = check_script(["a ", "naïve", "\t"], ["a", "naïve", "\t"])
    assert ("-", "a ") in ops and ("+", "a") in ops and (" ", "naïve") in ops


def test_shortest_on_random_small_inputs():
    rng = random.Random(7)
    for trial in range(400):
        n = rng.randrange(0, 12)
        a, b = random_pair(rng, n, "abc", rng.randrange(0, 6))
        check_script(a, b)


def test_shortest_on_random_larger_inputs():
    rng = random.Random(8)
    words = [f"line {k}" for k in range(40)]
    for trial in range(30):
        a, b = random_pair(rng, rng.randrange(20, 120), words, rng.randrange(0, 25))
        check_script(a, b)


def test_shortest_when_everything_differs_in_the_middle():
    a = ["head"] + [f"old {k}" for k in range(50)] + ["tail"]
    b = ["head"] + [f"new {k}" for k in range(40)] + ["tail"]
    ops = check_script(a, b)
    assert stats(ops) == (40, 50)


def test_stats():
    assert stats(diff(["a", "b", "c"], ["a", "c", "d", "e"])) == (2, 1)


# ---------------------------------------------------------------- unified diffs

def test_unified_diff_of_equal_inputs_is_empty():
    assert unified_diff(["a"], ["a"]) == []
    assert unified_diff([], []) == []


def test_unified_diff_format():
    a = [f"l{k}" for k in range(1, 11)]
    b = list(a)
    b[4] = "changed"
    assert unified_diff(a, b, "old.txt", "new.txt") == [
        "--- old.txt", "+++ new.txt", "@@ -2,7 +2,7 @@",
        " l2", " l3", " l4", "-l5", "+changed", " l6", " l7", " l8",
    ]


def test_unified_diff_separate_and_merged_hunks():
    a = [f"l{k}" for k in range(1, 31)]
    b = list(a)
    b[2] = "x"
    b[25] = "y"
    out = unified_diff(a, b)
    assert [ln for ln in out if ln.startswith("@@")] == ["@@ -1,6 +1,6 @@", "@@ -23,7 +23,7 @@"]
    b = list(a)
    b[2], b[8] = "x", "y"  # 5 lines apart: the contexts touch, one hunk
    assert [ln for ln in unified_diff(a, b) if ln.startswith("@@")] == ["@@ -1,12 +1,12 @@"]


def test_unified_diff_context_width():
    a = [f"l{k}" for k in range(1, 11)]
    b = a[:4] + a[5:]
    assert unified_diff(a, b, n=0) == ["--- a", "+++ b", "@@ -5 +4,0 @@", "-l5"]
    assert unified_diff(a, b, n=1) == ["--- a", "+++ b", "@@ -4,3 +4,2 @@", " l4", "-l5", " l6"]


def test_unified_diff_from_and_to_empty():
    assert unified_diff([], ["a", "b"]) == ["--- a", "+++ b", "@@ -0,0 +1,2 @@", "+a", "+b"]
    assert unified_diff(["a"], []) == ["--- a", "+++ b", "@@ -1 +0,0 @@", "-a"]


# ---------------------------------------------------------------- patch

def test_patch_round_trips_random_inputs():
    rng = random.Random(9)
    words = [f"w{k}" for k in range(15)]
    for trial in range(150):
        a, b = random_pair(rng, rng.randrange(0, 60), words, rng.randrange(0, 12))
        for n in (0, 1, 3):
            assert patch(a, unified_diff(a, b, n=n)) == b


def test_patch_refuses_a_diff_that_does_not_apply():
    a = ["a", "b", "c"]
    d = unified_diff(a, ["a", "B", "c"])
    try:
        patch(["a", "x", "c"], d)
    except PatchError as e:
        assert "line 2" in str(e)
    else:
        raise AssertionError("patch applied a diff to the wrong lines")


def test_patch_refuses_garbage():
    try:
        patch(["a"], ["--- a", "+++ b", "this is not a hunk"])
    except PatchError:
        pass
    else:
        raise AssertionError("patch accepted a malformed diff")
