"""model_server.py: the GPT evaluation's model server. Protected: the agent never edits this file.

evaluate.py starts it as `python model_server.py ...`; it imports train.py, rebuilds the model with
`build_model(config)`, loads the checkpoint's weights and then only answers requests on the pipes
it was given: token ids (B, T) in, logits (B, T, V) out, written as fp32 into a shared buffer.
Everything it prints goes to evaluate.py, which shows it prefixed and never takes it for a result.

Guarantees (its part of evaluate.py's):
- Before train.py is imported, the server confines itself where Linux Landlock is available: the
  validation files it is given (`--deny`) become unreadable to it and to anything it starts, it can
  write files only in its TMPDIR, and it can no longer ptrace the judge or open its /proc/<pid>/fd
  or /mem. A seccomp filter (x86_64, aarch64) refuses it and its children System V IPC, POSIX
  message queues and keyrings. It reports all that (a CONF frame) before train.py runs. It dies
  with the judge (PR_SET_PDEATHSIG).
- Before train.py runs, every MKL vector-math function has run once on one thread (_warm_vml), so
  two servers give bit-identical logits for identical rows.
- A model that cannot be built, raises, or returns anything but float logits (B, T, V) gets a
  FAIL reply naming the problem, and the server exits.

Not covered: whatever train.py does to this process (it may patch this module, torch, anything):
the judge trusts nothing it sends but logits of the right shape, and checks those.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import struct
import sys
from pathlib import Path

import numpy as np

HEADER = struct.Struct("<4sIII")  # a frame's tag, then three numbers: (B, T, V), (length, 0, 0), ...


def serve(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    for flag in ("--checkpoint", "--train", "--device", "--fds"):
        p.add_argument(flag, required=True)
    p.add_argument("--shm-bytes", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--deny", nargs="*", default=[])
    p.add_argument("--amp", choices=("bf16", "none"), default="none")  # the scale's precision (prepare.amp_dtype)
    args = p.parse_args(argv)
    req, rep, shm_fd = map(int, args.fds.split(","))
    _die_with(args.parent)
    try:
        import mmap

        import torch

        _warm_vml(torch)  # before anything (train.py included) runs a VML op on several threads
        floats = np.frombuffer(mmap.mmap(shm_fd, args.shm_bytes), dtype=np.float32)
        device = torch.device(args.device)
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        confined, note = confine([Path(d) for d in args.deny], os.environ.get("TMPDIR"))
        note += "; " + forbid_ipc()
        note_bytes = note.encode()  # sent before train.py runs: nothing it does can change this frame
        _send(rep, HEADER.pack(b"CONF", int(confined), len(note_bytes), 0) + note_bytes)
        train_file = Path(args.train)
        sys.path.insert(0, str(train_file.parent.resolve()))
        import importlib.util

        spec = importlib.util.spec_from_file_location("train", train_file)
        train = sys.modules["train"] = importlib.util.module_from_spec(spec)  # as `import train` would
        spec.loader.exec_module(train)  # its `if __name__ == "__main__"` keeps it from training
        model = train.build_model(ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
        model.to(device).eval()
    except BaseException as e:
        _fail(rep, f"could not build the model from train.py: {type(e).__name__}: {e}")
        raise
    _send(rep, HEADER.pack(b"REDY", 0, 0, 0))
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else contextlib.nullcontext())
    with os.fdopen(req, "rb", buffering=0) as requests:
        while head := _read_exact(requests, HEADER.size):
            tag, B, T, _ = HEADER.unpack(head)
            if tag != b"ROWS":
                raise ValueError(f"unknown request {tag!r}")
            ids = np.frombuffer(_read_exact(requests, B * T * 4), dtype="<i4").reshape(B, T)
            try:
                with torch.no_grad(), autocast:
                    out = model(torch.from_numpy(ids.astype(np.int64)).to(device))
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"the model returned a {type(out).__name__}, not float logits (B, T, vocab)")
                if not out.is_floating_point() or out.dim() != 3:
                    raise TypeError(f"the model returned a {out.dtype} tensor of shape {tuple(out.shape)}, "
                                    "not float logits (B, T, vocab)")
                if out.numel() > len(floats):
                    raise ValueError(f"the model returned logits of shape {tuple(out.shape)} for ids ({B}, {T})")
                torch.from_numpy(floats[:out.numel()]).view(out.shape).copy_(out.detach())
            except Exception as e:
                _fail(rep, f"{type(e).__name__}: {e}")
                raise
            _send(rep, HEADER.pack(b"LGTS", *out.shape))
    return 0


# The float ops ATen hands to MKL's vector math library (VML) on CPU, aten/src/ATen/cpu/vml.h.
_VML_OPS = ("abs", "acos", "asin", "atan", "cos", "erf", "erfc", "exp", "expm1", "log", "log10", "log1p",
            "log2", "sin", "sqrt", "tan", "tanh", "trunc")


def _warm_vml(torch) -> None:
    """Run every VML function once, on one element, on this thread alone. oneMKL 2024.2 (torch's CPU
    wheels) picks each function's kernel lazily on its first call; when that first call runs on
    several intra-op threads at once, one thread can run a low-accuracy kernel on its whole chunk
    (pytorch/pytorch#188792): cos off by 1.5e-4, logits by ~3e-3, in a random ~20% of processes.
    Two servers must give bit-identical logits for identical rows, so this runs before train.py."""
    for dtype in (torch.float32, torch.float64):
        x = torch.full((1,), 0.5, dtype=dtype)
        for op in _VML_OPS:
            getattr(torch, op)(x)


def _read_exact(f, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = f.read(n - len(out))
        if not chunk:
            if out:
                raise EOFError("the judge closed the request pipe mid-request")
            return b""
        out += chunk
    return bytes(out)


def _send(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fail(fd: int, message: str) -> None:
    data = message.encode("utf-8", "replace")[:4000]
    with contextlib.suppress(OSError):
        _send(fd, HEADER.pack(b"FAIL", len(data), 0, 0) + data)


def _die_with(parent: int) -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    if os.getppid() != parent:  # the judge died before the line above took effect
        sys.exit(1)


# ---------------------------------------------------------------- Landlock: unreadable validation files

_READ_FILE = 1 << 2  # LANDLOCK_ACCESS_FS_READ_FILE
_WRITE_FILE = 1 << 1
# Writing, removing and making files of every kind (Landlock ABI 1): allowed only in the server's own
# TMPDIR, which the judge deletes, so nothing it learns survives it for the next server to read.
_WRITES = _WRITE_FILE | sum(1 << bit for bit in range(4, 13))


def confine(deny: list[Path], writable: str | None = None) -> tuple[bool, str]:
    """Make the files in `deny` unreadable for this process and its children, for good (Linux Landlock),
    and every file system write impossible outside `writable` (and /dev/null).

    Landlock only grants, so everything else is granted: at each folder on the way from / to a
    denied file, every other entry gets a read rule. Also cuts this process off from ptrace and
    /proc/<pid>/{fd,mem,environ} of processes outside it (the judge). Returns (confined, why).
    """
    deny = {os.path.realpath(p) for p in deny if os.path.exists(p)}
    if not deny:
        return False, "no validation files to hide"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        if libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint(1)) < 1:  # the ABI version
            return False, "Landlock is not available on this system"
        attr = ctypes.create_string_buffer(struct.pack("<Q", _READ_FILE | _WRITES), 8)
        ruleset = libc.syscall(444, attr, ctypes.c_size_t(8), ctypes.c_uint(0))
        if ruleset < 0:
            return False, f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}"
    except (OSError, AttributeError) as e:
        return False, f"Landlock is not available on this system ({e})"
    try:
        ancestors = {os.path.dirname(p) for p in deny}
        for p in list(ancestors):
            while p != os.path.dirname(p):
                p = os.path.dirname(p)
                ancestors.add(p)
        for folder in sorted(ancestors):
            with contextlib.suppress(OSError), os.scandir(folder) as entries:
                for entry in entries:
                    real = os.path.realpath(entry.path)  # a link to a hidden file or folder stays out
                    if real in deny or real in ancestors or any(d.startswith(real.rstrip("/") + "/") for d in deny):
                        continue
                    with contextlib.suppress(OSError):
                        fd = os.open(real, os.O_PATH | os.O_CLOEXEC)
                        try:
                            rule = ctypes.create_string_buffer(struct.pack("<Qi", _READ_FILE, fd), 12)
                            libc.syscall(445, ctypes.c_int(ruleset), ctypes.c_int(1), rule, ctypes.c_uint(0))
                        finally:
                            os.close(fd)
        for path, rights in ((writable, _READ_FILE | _WRITES), ("/dev/null", _READ_FILE | _WRITE_FILE)):
            if path and os.path.exists(path):
                fd = os.open(os.path.realpath(path), os.O_PATH | os.O_CLOEXEC)
                try:
                    rule = ctypes.create_string_buffer(struct.pack("<Qi", rights, fd), 12)
                    if libc.syscall(445, ctypes.c_int(ruleset), ctypes.c_int(1), rule, ctypes.c_uint(0)) != 0:
                        return False, f"landlock_add_rule({path}) failed: {os.strerror(ctypes.get_errno())}"
                finally:
                    os.close(fd)
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: required to restrict oneself
            return False, f"prctl(NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}"
        if libc.syscall(446, ctypes.c_int(ruleset), ctypes.c_uint(0)) != 0:
            return False, f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}"
    finally:
        os.close(ruleset)
    return True, f"Landlock: {len(deny)} validation file(s) unreadable, writes only in its TMPDIR"


# ---------------------------------------------------------------- seccomp: no state that outlives it

# System calls that make or reach state outliving the process and that Landlock does not cover (System
# V shared memory, semaphores and message queues, POSIX message queues, kernel keyrings): the first
# server could leave its memory there for the second. Numbers per architecture (AUDIT_ARCH_*).
# In order: shmget, semget, msgget, mq_open, add_key, request_key, keyctl.
_KEEPERS = {0xC000003E: (29, 64, 68, 240, 248, 249, 250),  # x86_64
            0xC00000B7: (194, 190, 186, 180, 217, 218, 219)}  # aarch64


def forbid_ipc() -> str:
    """Refuse (EPERM) the system calls in _KEEPERS for this process and its children, for good (a seccomp
    filter), and every system call of another ABI (i386's int 0x80 and x32 on x86_64: their own numbers
    for the same calls). Returns a note on what was done, for the CONF frame."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        arch = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}.get(os.uname().machine)
        if arch is None:
            return f"IPC and keyrings not restricted (no system call table for {os.uname().machine})"
        nrs = _KEEPERS[arch]
        ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, JMP|JEQ|K, JMP|JGE|K, RET|K
        allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
        n = len(nrs)
        prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, deny),  # another ABI (i386's int 0x80): refused
                (ld, 0, 0, 0), (jge, n + 1, 0, 0x40000000)]  # x32 system calls: refused
        prog += [(jeq, n - i, 0, nr) for i, nr in enumerate(nrs)]
        prog += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
        filt = (ctypes.c_ubyte * (8 * len(prog)))(*b"".join(struct.pack("<HBBI", *ins) for ins in prog))

        class Fprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        fprog = Fprog(len(prog), ctypes.addressof(filt))
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            return f"IPC and keyrings not restricted: prctl(NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}"
        if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
            return f"IPC and keyrings not restricted: seccomp: {os.strerror(ctypes.get_errno())}"
    except (OSError, AttributeError) as e:
        return f"IPC and keyrings not restricted: {e}"
    return "System V IPC, POSIX message queues and keyrings refused (seccomp)"


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
