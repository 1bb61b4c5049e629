"""evaluate.py: the judge's measurement of a checkpoint. Protected: the agent never edits this file.

`python prepare.py evaluate --checkpoint PATH` runs `evaluate_checkpoint` here. The candidate's code
(train.py) never runs in this process: a child, the *model server* (model_server.py), imports it,
rebuilds the model and only turns token ids (B, T) into logits (B, T, V). This process keeps the
targets and the token byte lengths to itself and computes val_bpb with its own cross-entropy.

Guarantees:
- Nothing the server does reaches this process's stdout or its code: requests and replies travel on
  dedicated pipes and a shared buffer; the server's stdout and stderr are relayed to stderr with
  every line prefixed `[train.py] ` (the judge reads metric and `violation:` lines only at the
  start of a line; \r and other line breaks start a new prefixed line), at most RELAY_LIMIT bytes,
  and never after this process's final lines. Monkeypatching torch in the server changes only
  the logits it sends, and those are what is checked.
- A server that crashes, stays silent for `timeout_s` (start-up, or one batch), or sends logits of
  the wrong shape or with NaN/inf ends the evaluation with an `error:` line and exit status 1: a
  crash for the judge, never a metric. Its process group is killed on the way out.
- Causality is checked on the rows that are scored. Mixed into the scored validation windows, in
  one random order and in batches of one shape, go: copies of sampled scored rows whose tokens
  after a random cut t come from another real validation position; exact copies of scored rows
  (a row's logits must not depend on the other rows of its batch); a random-token row and copies
  of it with a new random future. The choices come from os.urandom, so the server cannot know
  which rows are probes, and a probe is compared with the logits that were scored. Logits at
  positions <= t of a pair must agree within TOLERANCE, else `violation: the model is not causal
  ...` and exit status 2. Spliced probes: spliced_probes(rows) (64 at the CPU scale), cut afresh.
- The rows are split between two servers, run one after the other, and the two rows of every pair
  go to different ones: a server that remembers the prefixes it has answered (to give a probe the
  answer its twin got, after peeking at the twin's future) never sees the twin. Nothing a server
  starts outlives it: this process adopts every orphan below it (a child subreaper) and kills all
  of them when a server closes, a daemon that left the group included. Two honest servers give
  bit-identical logits: each warms MKL's vector math on one thread before train.py runs (see
  model_server._warm_vml: otherwise a race in oneMKL 2024.2 moved logits by ~3e-3 in ~20-40% of
  processes).
- Where Linux Landlock is available, the server cannot read the validation files (val.bin in every
  cache folder, the texts they were made from: prepare.validation_files()) nor reach this process
  through /proc/<pid>/{fd,mem}: the validation data reach it only as the rows sent to it. It can
  write files only in its own TMPDIR, which is deleted before the next server starts, so the first
  server cannot leave the second its memory. On x86_64 and aarch64 a seccomp filter refuses it
  System V IPC, POSIX message queues and kernel keyrings, the state that outlives a process and
  that Landlock does not cover. Its confinement is reported before train.py runs.

Not covered:
- Without Landlock (non-Linux, kernels before 5.13 or without it enabled; stderr then says
  `model server: NOT confined`) the server can read the validation data and answer from them (a
  causal cheat), and write to this process's output through /proc/<pid>/fd (same user).
- Without the harness's sandbox, the server can append to the evaluation's log by its path; it can
  read this process's environment (/proc/<pid>/environ), which holds nothing that steers the check.
- With Landlock, the server cannot read files created after it starts directly inside a folder on
  the way to the validation files (e.g. a new folder in ~/.cache); its TMPDIR is a fresh folder.
- Without Landlock, the first server can leave the second its memory in a plain file; on other
  architectures than x86_64 and aarch64, in System V IPC or a keyring.
- A copy of val.bin outside the folders named in the deny list (an old cache elsewhere) is
  readable: the list names the validation files, it is not an allow-list.
- Sparse peeks: a model that looks ahead at a few positions only is caught by a probe only when a
  cut falls there; with K spliced probes and a peek at one position in T, it passes with
  probability about (1 - 1/T)^K.
- GPU: untested on GPU hardware. At the GPU scales the server runs under bf16 autocast (`amp`, the
  scale's precision, as evaluate_bpb does), and every batch crosses host memory as fp32 logits
  (B x T x V x 4 bytes; ~690 GB in all for the GPU scale's 21M tokens); how long that takes, and
  whether causal models give bit-identical prefixes on a GPU, are unmeasured. On the CPU they do,
  in fp32 and in bf16 (the tests run the GPU scale's evaluation there: largest difference 0).
- MPS: unmeasured. The server runs the model on MPS; this process sums on the CPU (MPS has no float64).
"""

from __future__ import annotations

import codecs
import contextlib
import importlib.util
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

TOLERANCE = 1e-4  # fp32: a causal model gives (near) bit-identical prefixes; a peek moves them far more
SPLICED, DUPLICATES = 24, 4  # the fewest spliced probes (spliced_probes), exact copies; plus a random row
RELAY_LIMIT = 1 << 20  # bytes of the server's own output shown; the rest is dropped
PREFIX = "[train.py] "
BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines() splits on
SERVER = Path(__file__).with_name("model_server.py")


def _server_module():
    spec = importlib.util.spec_from_file_location("gpt_model_server", SERVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # only definitions: the server itself runs in its own process
    return module


HEADER = _server_module().HEADER  # the frames' layout, shared with the server


class ServerError(RuntimeError):
    """The model server failed: crashed, timed out, or answered out of protocol."""


def spliced_probes(rows: int) -> int:
    """How many scored rows get a spliced probe: each tests one cut, so a model that peeks at a share f
    of the positions passes with probability (1 - f)^K. At least 24; 64 where that costs at most a
    quarter more rows (at the CPU scale's 484 rows a peek at 5% of positions was caught in 25 of 25
    evaluations, against 22 of 25 with the 30 probes before; the random-token row adds a few cuts); a
    sixteenth of the rows beyond 1,024 (the GPU scale: ~640)."""
    return max(SPLICED, min(64, rows // 4), rows // 16)


def evaluate_checkpoint(checkpoint: Path, train_file: Path, data, bpb_sums, device: str | None = None,
                        max_tokens: int | None = None, timeout_s: float = 300.0,
                        deny: list[Path] = (), batch_size: int = 16, amp: str = "") -> int:
    """Print `causal: ok` and `val_bpb: X` (exit 0), a `violation:` line (2) or an `error:` line (1).

    `data` is prepare.Data; `bpb_sums` prepare.bpb_sums (one formula for every evaluation); `deny` the
    files the server must not read (prepare.validation_files()); `amp` "bf16" runs the server's
    forward under bf16 autocast on `device` (the scale's precision, prepare.amp_dtype), else fp32.
    """
    import torch

    server_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    device = torch.device("cpu") if server_device.type == "mps" else server_device  # MPS has no float64
    T, V = data.seq_len, data.vocab_size
    tokens = data.tokens("val")
    n_rows = min((len(tokens) - 1) // T, (max_tokens or data.scale.eval_tokens) // T)
    if n_rows < 1:
        raise SystemExit(f"only {len(tokens)} validation tokens: fewer than one row of {T}")
    val = np.array(tokens[:n_rows * T + 1], dtype=np.int64)  # a private copy; the file is closed below
    del tokens
    nbytes = torch.from_numpy(data.token_bytes()).to(device)
    rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    rows, pairs, sides = _plan(val, n_rows, T, V, batch_size, rng)
    n_pairs = len(pairs)
    need = {}  # row -> prefix length its pairs compare
    for a, b, t in pairs:
        need[a], need[b] = max(need.get(a, 0), t + 1), max(need.get(b, 0), t + 1)
    kept, worst = {}, {"later tokens": 0.0, "other rows": 0.0}
    nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for part in (0, 1):  # two servers, one after the other: the members of a pair never meet
            order = rng.permutation(np.flatnonzero(sides == part))
            with ModelServer(checkpoint, train_file, device, V, batch_size, T, timeout_s, deny, amp,
                             server_device) as server:
                for i in range(0, len(order), batch_size):
                    idx = order[i:i + batch_size]
                    logits = server.forward(rows[idx])
                    scored = np.flatnonzero(idx < n_rows)
                    if len(scored):
                        starts = idx[scored] * T + 1
                        y = torch.from_numpy(val[starts[:, None] + np.arange(T)]).to(device)
                        n, b = bpb_sums(logits[scored], y, nbytes)
                        nats += n
                        total_bytes += b
                    for j, r in enumerate(idx.tolist()):
                        if r in need:
                            kept[r] = logits[j, :need[r]].to("cpu", copy=True)  # not a view of the batch
                    del logits
                    _compare_ready(pairs, kept, worst, T)
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    if worst["later tokens"] > TOLERANCE or worst["other rows"] > TOLERANCE:
        print(f"causal: violated (logits moved by {worst['later tokens']:.3g} when only later tokens changed, "
              f"by {worst['other rows']:.3g} when only the other rows of the batch changed)", flush=True)
        why = "later tokens" if worst["later tokens"] > TOLERANCE else "the other rows of its batch"
        print(f"violation: the model is not causal (its logits depend on {why})", flush=True)
        return 2
    print(f"causal: ok ({n_pairs} probe pairs; their shared prefixes moved by at most "
          f"{max(worst.values()):.3g})", flush=True)
    print(f"val_bpb: {float(nats / (math.log(2) * total_bytes)):.6f}", flush=True)
    return 0


def _plan(val: np.ndarray, n_rows: int, T: int, V: int, batch: int, rng) -> tuple[np.ndarray, list, np.ndarray]:
    """All rows to send, the n_rows scored windows first; the pairs (a, b, t) whose logits at
    positions <= t must agree (t = T - 1: the same row twice); and each row's server (0 or 1).

    The two members of every pair go to different servers, which run one after the other and
    cannot leave each other anything (no process, file, IPC object or key survives a server): a
    server that remembers the prefixes it has seen, to answer a probe as it answered its twin,
    never sees the twin. Each server gets whole batches only: one shape, so one set of kernels.
    """
    scored = val[:n_rows * T].reshape(n_rows, T)
    extra, pairs, side = [], [], {}

    def row(i: int) -> np.ndarray:
        return scored[i] if i < n_rows else extra[i - n_rows]

    def add(r) -> int:
        extra.append(r)
        return n_rows + len(extra) - 1

    def splice(a: int, t: int | None = None) -> int:
        """A probe of row a: its tokens [0, t], then a future from elsewhere (or a plain copy)."""
        t = int(rng.integers(0, T - 1)) if t is None else t
        for _ in range(8):
            s = int(rng.integers(0, len(val) - (T - t - 1) + 1))
            future = val[s:s + T - t - 1]
            if not np.array_equal(future, row(a)[t + 1:]):
                b = add(np.concatenate([row(a)[:t + 1], future]))
                pairs.append((a, b, t))
                return b
        b = add(row(a).copy())  # text that repeats everywhere: a plain copy
        pairs.append((a, b, T - 1))
        return b

    for a in rng.choice(n_rows, min(n_rows, spliced_probes(n_rows)), replace=False):
        splice(int(a))
    for a in rng.choice(n_rows, min(n_rows, DUPLICATES), replace=False):
        pairs.append((int(a), add(scored[a].copy()), T - 1))
    base = add(rng.integers(1, V, T))  # random tokens, never BOS (0)
    for t in {int(x) for x in rng.integers(0, T - 1, 4)}:  # cuts a server cannot know in advance
        r = extra[base - n_rows].copy()
        r[t + 1:] = rng.integers(1, V, T - t - 1)
        pairs.append((base, add(r), t))
    for a, _, _ in pairs:  # every probe has one partner (its hub): the pairs form stars, so two sides do
        side.setdefault(a, int(rng.integers(2)))
    for a, b, _ in pairs:
        side[b] = 1 - side[a]
    for i in range(n_rows + len(extra)):
        side.setdefault(i, int(rng.integers(2)))
    for s in (0, 1):
        count = sum(1 for v in side.values() if v == s)
        while count % batch:  # pad with probes of rows the other server answers
            others = [i for i in range(n_rows) if side[i] != s] or [i for i in side if side[i] != s]
            side[splice(int(rng.choice(others)))] = s
            count += 1
    rows = np.concatenate([scored, np.stack(extra)])
    return rows, pairs, np.array([side[i] for i in range(len(rows))])


def _compare_ready(pairs: list, kept: dict, worst: dict, T: int) -> None:
    """Compare every pair whose two rows have both been answered, then drop logits no pair needs."""
    for a, b, t in [p for p in pairs if p[0] in kept and p[1] in kept]:
        moved = (kept[a][:t + 1] - kept[b][:t + 1]).abs().max().item()
        kind = "other rows" if t == T - 1 else "later tokens"
        worst[kind] = max(worst[kind], moved)
        pairs.remove((a, b, t))
        for r in (a, b):
            if not any(r in p[:2] for p in pairs):
                kept.pop(r)


class ModelServer:
    """The candidate's model in a child process that only turns token ids into logits."""

    def __init__(self, checkpoint: Path, train_file: Path, device, vocab_size: int, max_rows: int,
                 seq_len: int, timeout_s: float, deny: list[Path] = (), amp: str = "", server_device=None):
        self.V, self.timeout_s, self.device = vocab_size, timeout_s, device
        self._relayed, self._lock, self._closed = 0, threading.Lock(), False
        self._tmp = tempfile.mkdtemp(prefix="model-server-")  # its TMPDIR: readable under Landlock
        size = max_rows * seq_len * vocab_size * 4
        self._shm_fd = _shared_memory(size)
        import mmap

        self._shm = mmap.mmap(self._shm_fd, size)
        self._floats = np.frombuffer(self._shm, dtype=np.float32)
        req_r, self._req = os.pipe()
        self._rep, rep_w = os.pipe()
        os.set_blocking(self._req, False)  # a server that stops reading must not block the judge
        env = {k: v for k, v in os.environ.items() if k != "AUTORESEARCH_EVAL_SECRET"} | {"TMPDIR": self._tmp}
        cmd = [sys.executable, str(SERVER.resolve()), "--checkpoint", str(checkpoint),
               "--train", str(train_file), "--device", str(server_device or device), "--amp", amp or "none",
               "--fds", f"{req_r},{rep_w},{self._shm_fd}",
               "--shm-bytes", str(size), "--parent", str(os.getpid()), "--deny", *map(str, deny)]
        _adopt_orphans()  # before the server can start anything that outlives it
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, pass_fds=(req_r, rep_w, self._shm_fd),
                                     env=env, start_new_session=True)
        os.close(req_r)
        os.close(rep_w)
        self._relay = threading.Thread(target=self._relay_output, daemon=True)
        self._relay.start()
        try:
            # The confinement frame comes before train.py is imported, so train.py cannot forge it; its
            # note is shown on one line whatever it holds.
            tag, confined, n, _ = self._read_header("start-up (confining itself)")
            if tag != b"CONF" or n > 4096:
                raise ServerError(f"the model server sent {tag!r} at start-up, not its confinement")
            note = " ".join(self._read(n, "start-up").decode("utf-8", "replace").split())
            with self._lock:  # the relay thread writes stderr too
                print(f"model server: {'confined' if confined else 'NOT confined'} ({note})", file=sys.stderr,
                      flush=True)
            tag, _, _, _ = self._read_header("start-up (importing train.py, building the model)")
            if tag != b"REDY":
                raise ServerError(f"the model server sent {tag!r} at start-up, not READY")
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def forward(self, x: np.ndarray):
        """Logits (B, T, V) as a validated fp32 tensor on the judge's device, the judge's own copy."""
        import torch

        B, T = x.shape
        self._write(HEADER.pack(b"ROWS", B, T, 0) + np.ascontiguousarray(x, dtype="<i4").tobytes())
        tag, b, t, v = self._read_header("a batch of logits")
        if tag != b"LGTS":
            raise ServerError(f"the model server sent {tag!r}, not logits")
        if (b, t) != (B, T) or v != self.V:
            raise ServerError(f"the model returned logits of shape ({b}, {t}, {v}) for ids of shape ({B}, {T}); "
                              f"expected ({B}, {T}, {self.V})")
        # Copy first, then check: the server can write the buffer at any time, never into this copy.
        logits = torch.from_numpy(self._floats[:B * T * self.V]).view(B, T, self.V).to(self.device, copy=True)
        if not torch.isfinite(logits).all():
            raise ServerError("the model returned NaN or infinite logits")
        return logits

    def close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(OSError):
            os.close(self._req)  # end of requests: an honest server exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # and whatever it started in its group
        self.proc.wait()
        try:
            _kill_descendants()  # and whatever left the group (setsid, a double fork): nothing outlives it
        finally:
            self._relay.join(2)  # a grandchild outside the group may hold the pipe: stop relaying anyway
            with self._lock:
                self._closed = True
            with contextlib.suppress(OSError):
                os.close(self._rep)
            del self._floats
            with contextlib.suppress(BufferError):
                self._shm.close()
            with contextlib.suppress(OSError):
                os.close(self._shm_fd)
            shutil.rmtree(self._tmp, ignore_errors=True)

    # -- plumbing

    def _relay_output(self) -> None:
        # Every line the server prints reaches the log behind PREFIX, so none of it can pass for a
        # judge's line; \r, form feeds and the other Unicode line breaks end a line too (the judge
        # splits on \r as well as \n).
        decode, pending = codecs.getincrementaldecoder("utf-8")("replace"), ""
        while chunk := self.proc.stdout.read1(65536):
            text = pending + decode.decode(chunk)
            lines = text.splitlines()
            pending = lines.pop() if lines and text[-1] not in BREAKS else ""
            if len(pending) > 4096:  # a line that never ends is shown in pieces
                lines, pending = lines + [pending], ""
            self._emit(lines)
        self._emit([pending] if pending else [])

    def _emit(self, lines: list[str]) -> None:
        with self._lock:
            if self._closed or self._relayed > RELAY_LIMIT:
                return
            text = "".join(f"{PREFIX}{line}\n" for line in lines)
            self._relayed += len(text)
            if self._relayed > RELAY_LIMIT:
                text += f"{PREFIX}(further output of the model server dropped)\n"
            sys.stderr.write(text)
            sys.stderr.flush()

    def _deadline_wait(self, fd: int, write: bool, deadline: float, what: str) -> None:
        left = max(0.0, deadline - time.monotonic())
        readable, writable, _ = select.select([] if write else [fd], [fd] if write else [], [], left)
        if not (writable if write else readable):
            raise ServerError(f"the model server did not answer within {self.timeout_s:g}s ({what}); killed it")

    def _write(self, data: bytes) -> None:
        view, deadline = memoryview(data), time.monotonic() + self.timeout_s
        while view:
            self._deadline_wait(self._req, True, deadline, "reading a request")
            try:
                view = view[os.write(self._req, view):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise ServerError(self._died()) from None

    def _read(self, n: int, what: str) -> bytes:
        out, deadline = bytearray(), time.monotonic() + self.timeout_s
        while len(out) < n:
            self._deadline_wait(self._rep, False, deadline, what)
            chunk = os.read(self._rep, n - len(out))
            if not chunk:
                raise ServerError(self._died())
            out += chunk
        return bytes(out)

    def _read_header(self, what: str) -> tuple[bytes, int, int, int]:
        tag, a, b, c = HEADER.unpack(self._read(HEADER.size, what))
        if tag == b"FAIL":
            raise ServerError(f"the model server failed: {self._read(a, what).decode('utf-8', 'replace')}")
        return tag, a, b, c

    def _died(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(2)
        code = self.proc.poll()
        return (f"the model server exited with status {code} (its output is above, each line prefixed "
                f"{PREFIX.strip()!r})" if code is not None else "the model server closed its pipe")


def _adopt_orphans() -> None:
    """Make this process the Linux "child subreaper" of everything it starts: a server's grandchild
    that leaves its process group and its parent (a daemon, keeping the first server's memory for
    the second) becomes this process's child instead of init's, so _kill_descendants finds it."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _kill_descendants() -> None:
    """SIGKILL every process below this one and reap it, until none is left (Linux /proc; elsewhere
    a no-op). The judge starts nothing but model servers, one at a time, so all of them are theirs.
    One that outlives 5 s of this fails the evaluation: the next server must not meet it."""
    me, deadline = os.getpid(), time.monotonic() + 5.0
    while True:
        parent = {}
        with contextlib.suppress(OSError):
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        with open(f"/proc/{entry}/stat", "rb") as f:
                            parent[int(entry)] = int(f.read().rsplit(b")", 1)[1].split()[1])
        below, grew = set(), True
        while grew:
            found = {pid for pid, pp in parent.items() if (pp == me or pp in below) and pid not in below}
            below |= found
            grew = bool(found)
        if not below:
            return
        if time.monotonic() > deadline:
            raise ServerError(f"processes the model server started survive SIGKILL: {sorted(below)}")
        for pid in below:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in below:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # ours once adopted: a zombie until reaped
        time.sleep(0.01)


def _shared_memory(size: int) -> int:
    """A file descriptor of `size` bytes to share with the server, sealed against resizing where
    the system can (a shrunk buffer would crash the judge with SIGBUS: a crash, yet a clumsy one)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("model-server-logits", os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 0))
        os.ftruncate(fd, size)
        import fcntl

        with contextlib.suppress(AttributeError, OSError):
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        return fd
    f = tempfile.TemporaryFile()
    f.truncate(size)
    return os.dup(f.fileno())
