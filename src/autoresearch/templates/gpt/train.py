"""train.py: the agent's half of the GPT task. Everything here may change.

A small modern GPT and its training loop, trained for a fixed time budget, then measured by
prepare.evaluate_bpb. prepare.scale() picks the scale from the hardware: "cpu" (fp32, eager, 2 layers
of 128), "mps" (Apple Silicon: fp32, eager, SDPA), "gpu-small" and "gpu-medium" (consumer cards by
free memory) and "gpu" (datacenter: ~50M parameters at depth 8); the GPU scales train under bf16
autocast, torch.compile, and FlashAttention 3 (Hopper) or 2 (Ampere+) when installed, else PyTorch's
SDPA (the fallback: AMD/ROCm, older cards, MPS, CPU). Every scale runs the same code: with
AUTORESEARCH_DEVICE=cpu a GPU scale's code runs on the CPU (how the tests keep it from rotting).

What the harness relies on (keep these when you change the rest):
- `python train.py` trains for prepare.time_budget() seconds of training, then prints the summary
  block that ends the file; the harness reads the last `val_bpb:` line.
- `build_model(config)` rebuilds the model from the dict saved with the checkpoint, and the model
  maps token ids (B, T) to logits (B, T, vocab) when called with ids alone, using no future tokens.
- With AUTORESEARCH_CHECKPOINT set, the trained weights are saved there (prepare.save_checkpoint),
  so `python prepare.py evaluate --checkpoint PATH` can re-measure them in another process.
- Importing this file trains nothing.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare

# ---------------------------------------------------------------- the knobs
# One constant per line, so that tools (and people) can find and turn them. prepare.scale() picks
# the scale from the hardware (or AUTORESEARCH_SCALE). The model shape and batch below are the CPU's;
# the other scales' are in SHAPES, one scale per line (so that a numeric mutation tool running on a
# CPU does not spend experiments on knobs that change nothing there). device_batch: rows per forward
# pass, bounded by memory (estimate_memory); batch_tokens per optimizer step (the rest accumulates).

SHAPES = {
    "mps": dict(depth=4, heads=2, head_dim=128, batch_tokens=32768, device_batch=16, compile=False),
    "gpu-small": dict(depth=4, heads=2, head_dim=128, batch_tokens=65536, device_batch=32, compile=True),
    "gpu-medium": dict(depth=6, heads=3, head_dim=128, batch_tokens=262144, device_batch=32, compile=True),
    "gpu": dict(depth=8, heads=4, head_dim=128, batch_tokens=524288, device_batch=32, compile=True),
}
CPU_DEPTH = 2
CPU_HEADS = 2
CPU_HEAD_DIM = 64
CPU_BATCH_TOKENS = 4096
MATRIX_LR = 0.04  # Muon, for the 2D matrices inside the blocks
EMBED_LR = 0.6  # AdamW, token and value embeddings
UNEMBED_LR = 0.004  # AdamW, the output layer
SCALAR_LR = 0.5  # AdamW, the per-layer gains
MUON_MOMENTUM = 0.95
WARMUP_FRAC = 0.0  # fraction of the budget spent ramping the learning rate up
WARMDOWN_FRAC = 0.5  # fraction of the budget at the end spent decaying it linearly to zero
SOFTCAP = 15.0
WINDOW_PATTERN = "SSSL"  # per layer, repeated: S = half the context, L = all of it; the last layer is L


def hypers(scale: str) -> dict:
    g = SHAPES.get(scale) or dict(depth=CPU_DEPTH, heads=CPU_HEADS, head_dim=CPU_HEAD_DIM,
                                  batch_tokens=CPU_BATCH_TOKENS, device_batch=1 << 30, compile=False)
    return dict(depth=g["depth"], n_heads=g["heads"], d_model=g["heads"] * g["head_dim"],
                batch_tokens=g["batch_tokens"], device_batch=g["device_batch"], compile=g["compile"],
                warmup_steps=10 if scale in SHAPES else 2)  # steps left out of the training time (compilation)


@dataclass
class GPTConfig:
    vocab_size: int
    seq_len: int
    depth: int
    d_model: int
    n_heads: int
    windows: str  # WINDOW_PATTERN


# ---------------------------------------------------------------- the model


def norm(x):
    return F.rms_norm(x, (x.size(-1),))  # no learned gain: one fewer thing to tune


FLASH_MODULES = {"fa3": "flash_attn_interface", "fa2": "flash_attn"}


def choose_attention(device_type: str, capability: tuple[int, int], rocm: bool, installed) -> str:
    """The attention kernel for a device: "fa3" (FlashAttention 3: Hopper, compute capability 9.x),
    "fa2" (FlashAttention 2: Ampere or newer), else "sdpa", PyTorch's own, the fallback everywhere
    else (CPU, MPS, AMD/ROCm, Volta/Turing, or neither package installed). `installed`: the names
    in FLASH_MODULES whose module imports. A pure function: tests fake the device."""
    if device_type != "cuda" or rocm:
        return "sdpa"
    if capability[0] == 9 and "fa3" in installed:
        return "fa3"
    if capability >= (8, 0) and "fa2" in installed:
        return "fa2"
    return "sdpa"


def select_attention(device) -> tuple[str, object]:
    """(kernel name, its flash_attn_func or None) for `device`: what `attend` uses from now on."""
    device = torch.device(device)
    installed, funcs = set(), {}
    if device.type == "cuda":
        for name, module in FLASH_MODULES.items():
            try:
                funcs[name] = __import__(module).flash_attn_func
                installed.add(name)
            except Exception:  # not installed, or built for another CUDA: fall back quietly
                continue
    rocm = getattr(torch.version, "hip", None) is not None
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)
    kernel = choose_attention(device.type, capability, rocm, installed)
    return kernel, funcs.get(kernel)


ATTENTION, FLASH = select_attention("cuda") if torch.cuda.is_available() else ("sdpa", None)


def attend(q, k, v, window: int):
    """Causal attention over (B, T, H, D), each query seeing at most `window` keys (itself included)."""
    T = q.size(1)
    if FLASH is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        out = FLASH(q, k, v, causal=True, window_size=(window - 1 if window < T else -1, 0))
        return out[0] if isinstance(out, tuple) else out
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if window >= T:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        i = torch.arange(T, device=q.device)
        band = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=band)
    return y.transpose(1, 2)


def rotate(x, cos, sin):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, window: int, value_embed: bool):
        super().__init__()
        self.h, self.hd, self.window = cfg.n_heads, cfg.d_model // cfg.n_heads, window
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        # Value embeddings: a per-token vector added to the values, giving layers direct access
        # to token identity at almost no compute.
        self.ve = nn.Embedding(cfg.vocab_size, cfg.d_model) if value_embed else None
        self.ve_gain = nn.Parameter(torch.tensor(0.5)) if value_embed else None

    def forward(self, x, idx, cos, sin):
        B, T, _ = x.shape
        q, k, v = (f(x).view(B, T, self.h, self.hd) for f in (self.q, self.k, self.v))
        if self.ve is not None:
            v = v + self.ve_gain * self.ve(idx).view(B, T, self.h, self.hd)
        q, k = rotate(norm(q), cos, sin), rotate(norm(k), cos, sin)  # QK-norm keeps logits bounded
        return self.proj(attend(q, k, v, self.window).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.fc, self.proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())  # ReLU^2: sparse and cheap, beats GELU here


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        long = cfg.windows[layer % len(cfg.windows)] == "L" or layer == cfg.depth - 1  # last sees all
        window = cfg.seq_len if long else cfg.seq_len // 2
        value_embed = layer % 2 == (cfg.depth - 1) % 2  # alternating layers, the last one included
        self.attn, self.mlp = Attention(cfg, window, value_embed), MLP(cfg.d_model)

    def forward(self, x, idx, cos, sin):
        x = x + self.attn(norm(x), idx, cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)  # untied from the embedding
        # Per-layer mix of the running stream and the first embedding (a cheap skip to the input).
        self.resid_gain = nn.Parameter(torch.ones(cfg.depth))
        self.x0_gain = nn.Parameter(torch.zeros(cfg.depth))
        hd = cfg.d_model // cfg.n_heads
        freq = 10000.0 ** (-torch.arange(0, hd, 2).float() / hd)
        angle = torch.outer(torch.arange(cfg.seq_len).float(), freq)[None, :, None, :]
        self.register_buffer("cos", angle.cos(), persistent=False)
        self.register_buffer("sin", angle.sin(), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        d = self.cfg.d_model
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                p.zero_()  # each block starts as the identity; Muon grows it from there
            elif p.dim() == 2 and "embed" not in name and ".ve." not in name and name != "head.weight":
                p.uniform_(-(3 / d) ** 0.5, (3 / d) ** 0.5)
        nn.init.normal_(self.embed.weight, std=1.0)
        nn.init.normal_(self.head.weight, std=0.001)
        for block in self.blocks:
            if block.attn.ve is not None:
                nn.init.normal_(block.attn.ve.weight, std=1.0)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.embed(idx))
        for i, block in enumerate(self.blocks):
            x = block(self.resid_gain[i] * x + self.x0_gain[i] * x0, idx, cos, sin)
        logits = self.head(norm(x)).float()
        logits = SOFTCAP * torch.tanh(logits / SOFTCAP)  # soft cap: no runaway confidence
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def build_model(config: dict) -> GPT:
    """The model for a config dict (as saved with a checkpoint), on the CPU, in fp32."""
    return GPT(GPTConfig(**config))


# ---------------------------------------------------------------- optimizer: Muon + AdamW


def orthogonalize(G, steps: int = 5):
    """For a stack of matrices G (n, rows, cols), push each one's singular values towards 1
    (quintic Newton-Schulz iteration: only matrix products, no SVD)."""
    a, b, c = 3.4445, -4.7750, 2.0315  # coefficients that converge fast from a norm-scaled start
    X = G.bfloat16() if G.is_cuda else G.float()  # bf16 is accurate enough and twice as fast
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):  # X <- aX + (bA + cA^2)X with A = XX^T, in fused multiply-adds
        A = X @ X.mT
        X = torch.baddbmm(X, torch.baddbmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return (X.mT if tall else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum whose update is orthogonalised: every direction of a matrix moves at the same rate."""

    def __init__(self, params, lr: float, momentum: float = 0.95):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            by_shape = {}  # same-shaped matrices are orthogonalised together, in one batched call
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for shape, params in by_shape.items():
                grads = torch.stack([p.grad for p in params])
                bufs = torch.stack([self.state[p].setdefault("buf", torch.zeros_like(p)) for p in params])
                bufs.lerp_(grads, 1 - group["momentum"])
                update = orthogonalize(grads.lerp_(bufs, group["momentum"]))  # Nesterov
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                for p, buf, u in zip(params, bufs, update):
                    self.state[p]["buf"].copy_(buf)
                    p.add_(u, alpha=-group["lr"] * scale)


def make_optimizers(model: GPT):
    matrices = [p for n, p in model.blocks.named_parameters() if p.dim() == 2 and ".ve." not in n]
    embeds = [model.embed.weight] + [b.attn.ve.weight for b in model.blocks if b.attn.ve is not None]
    scalars = [p for p in model.parameters() if p.dim() < 2]
    # Adam's step size does not shrink with width, so scale it like 1/sqrt(width) from d=768.
    s = (model.cfg.d_model / 768) ** -0.5
    groups = [dict(params=embeds, lr=EMBED_LR * s), dict(params=[model.head.weight], lr=UNEMBED_LR * s),
              dict(params=scalars, lr=SCALAR_LR)]
    adam = torch.optim.AdamW(groups, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0,
                             fused=next(model.parameters()).is_cuda)
    optimizers = [adam, Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM)]
    for opt in optimizers:
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
    return optimizers


def lr_multiplier(progress: float) -> float:
    if progress < WARMUP_FRAC:
        return progress / WARMUP_FRAC
    return min(1.0, (1.0 - progress) / WARMDOWN_FRAC)


# ---------------------------------------------------------------- measuring


PEAK_BF16_FLOPS = [  # dense, no sparsity; the most specific names first
    ("h100 pcie", 756e12), ("h100 nvl", 835e12), ("h100", 989e12), ("h200", 989e12), ("gh200", 989e12),
    ("b200", 2250e12), ("a100", 312e12), ("l40s", 362e12), ("l40", 181e12), ("l4", 121e12),
    ("a10g", 70e12), ("a10", 125e12), ("rtx 4090", 165e12), ("rtx 3090", 71e12), ("a6000", 155e12),
    ("mi300x", 1307e12), ("mi250x", 383e12), ("mi250", 362e12),  # AMD Instinct, through ROCm
]


def peak_flops_for(name: str) -> float:
    """Peak bf16 FLOP/s of the GPU called `name` (as torch reports it), 0 when not in the table."""
    name = name.lower()
    return next((f for key, f in PEAK_BF16_FLOPS if key in name), 0.0)


def peak_flops(device) -> float:
    """The GPU's peak bf16 FLOP/s, or 0 when unknown (and always on the CPU and MPS): MFU is then 0."""
    return peak_flops_for(torch.cuda.get_device_name(device)) if device.type == "cuda" else 0.0


def mfu_percent(flops_per_token: float, tokens: float, seconds: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the device's peak, in percent (0 if unknown)."""
    return 100 * flops_per_token * tokens / seconds / peak if peak and seconds > 0 else 0.0


def flops_per_token(model: GPT) -> float:
    """Forward + backward FLOPs per token: 6 per matrix weight, plus attention over its window."""
    cfg = model.cfg
    matrix = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n and ".ve." not in n)
    T = cfg.seq_len
    keys = [min(b.attn.window, T) for b in model.blocks]  # mean keys per query, causal and windowed:
    attention = sum(12 * cfg.d_model * (w - w * (w - 1) / (2 * T)) for w in keys)
    return 6 * matrix + attention


def estimate_memory(scale: str, vocab_size: int, seq_len: int, math_attention: bool = False) -> dict:
    """Bytes a training step of `scale`'s shape needs on its device, by parts (an upper estimate).

    - static: fp32 weights (4 bytes a parameter), their gradients (4), optimizer state (AdamW 8, Muon
      4: at most 8), bf16 copies of the weights under autocast (2), and Muon's stacked gradients and
      buffers while it orthogonalises (at most 4 more): 22 bytes a parameter;
    - activations, per token of a forward pass (device_batch x seq_len tokens): 64 x width bytes per
      layer (measured with saved-tensor hooks under bf16 autocast: ~55) and 16 x vocab for the
      logits (fp32, soft-capped, their gradient); with `math_attention` (SDPA without a fused kernel:
      MPS, CPU) also the T x T scores, 12 x heads x seq_len bytes a token and layer;
    - 1 GiB for the CUDA context, kernels and the allocator's slack.
    """
    h = hypers(scale)
    cfg = GPTConfig(vocab_size, seq_len, h["depth"], h["d_model"], h["n_heads"], WINDOW_PATTERN)
    with torch.device("meta"):  # counts the parameters without allocating them
        params = sum(p.numel() for p in GPT(cfg).parameters())
    tokens = min(h["device_batch"], h["batch_tokens"] // seq_len) * seq_len
    per_token = h["depth"] * 64 * h["d_model"] + 16 * vocab_size
    if math_attention:
        per_token += h["depth"] * 12 * h["n_heads"] * seq_len
    out = dict(params=params, static=22 * params, activations=tokens * per_token, overhead=2**30)
    out["total"] = out["static"] + out["activations"] + out["overhead"]
    return out


def can_compile(device) -> tuple[bool, str]:
    """Whether torch.compile can work here, and why not: Inductor needs Triton on a GPU (compute
    capability 7.0 or newer, or ROCm) and a C++ compiler on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        rocm = getattr(torch.version, "hip", None) is not None
        ok = rocm or torch.cuda.get_device_capability(device) >= (7, 0)
        return ok, "" if ok else "Triton needs compute capability 7.0 or newer"
    if device.type == "cpu":
        cxx = os.environ.get("CXX", "g++")
        ok = shutil.which(cxx) is not None
        return ok, "" if ok else f"no C++ compiler ({cxx}) for Inductor's CPU kernels"
    return False, f"not on {device.type}"


# ---------------------------------------------------------------- training


def main() -> None:
    t_start = time.time()
    scale = prepare.scale()
    data = prepare.prepare(scale)
    h = hypers(scale.name)
    device = torch.device(prepare.run_device(scale))  # the scale's device; AUTORESEARCH_DEVICE overrides
    seed = int(os.environ.get("AUTORESEARCH_SEED", "42"))
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    elif device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    global ATTENTION, FLASH
    ATTENTION, FLASH = select_attention(device)
    cfg = GPTConfig(vocab_size=data.vocab_size, seq_len=data.seq_len, depth=h["depth"], d_model=h["d_model"],
                    n_heads=h["n_heads"], windows=WINDOW_PATTERN)
    model = build_model(dataclasses.asdict(cfg)).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    optimizers = make_optimizers(model)
    compiled, why_not = can_compile(device) if h["compile"] else (False, "off for this scale")
    forward = torch.compile(model) if compiled else model  # pays off on GPUs; the CPU scale skips it
    autocast = prepare.autocast(scale, device)  # bf16 at the GPU scales (on whatever device they run)
    rows_per_step = h["batch_tokens"] // cfg.seq_len
    accum = max(1, rows_per_step // h["device_batch"])
    loader = prepare.make_loader(data, min(h["device_batch"], rows_per_step), device, seed)
    budget = prepare.time_budget(scale)
    peak, fpt = peak_flops(device), flops_per_token(model)
    amp = prepare.amp_dtype(scale, device)
    print(f"scale {scale.name} | device {device.type} | params {num_params / 1e6:.2f}M | budget {budget:g}s | "
          f"batch {accum}x{min(h['device_batch'], rows_per_step)}x{cfg.seq_len} | "
          f"{str(amp).replace('torch.', '') if amp else 'fp32'} | attention {ATTENTION} | "
          f"compile {'on' if compiled else 'off (' + why_not + ')'}", flush=True)

    step, tokens, train_time, last_log, smooth = 0, 0, 0.0, 0.0, None
    while True:
        t0 = time.time()
        progress = train_time / budget
        for opt in optimizers:
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * lr_multiplier(progress)
        optimizers[1].param_groups[0]["momentum"] = MUON_MOMENTUM - 0.1 * max(0.0, 1 - step / 300)  # ramp up
        for _ in range(accum):
            x, y = next(loader)
            with autocast:
                loss = forward(x, y)
            (loss / accum).backward()
            tokens += x.numel()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        loss_value = loss.item()  # also waits for the GPU, so the timing below is honest
        if not math.isfinite(loss_value) or loss_value > 100:
            print(f"FAIL: loss is {loss_value} at step {step}: training diverged", flush=True)
            sys.exit(1)
        dt = time.time() - t0
        step += 1
        if step > h["warmup_steps"]:  # the first steps (compilation, allocation) do not count
            train_time += dt
        smooth = loss_value if smooth is None else 0.9 * smooth + 0.1 * loss_value
        if train_time - last_log >= 10 or train_time >= budget:
            last_log = train_time
            print(f"step {step:05d} | loss {smooth:.4f} | {x.numel() * accum / dt:,.0f} tok/s | "
                  f"{100 * min(progress, 1):.0f}% of budget", flush=True)
        if train_time >= budget:
            break

    val_bpb = prepare.evaluate_bpb(model, data, device)
    checkpoint = os.environ.get("AUTORESEARCH_CHECKPOINT")
    if checkpoint:
        prepare.save_checkpoint(model, dataclasses.asdict(cfg), checkpoint)
    counted_tokens = tokens * max(0.0, 1 - h["warmup_steps"] / step)
    mfu = mfu_percent(fpt, counted_tokens, train_time, peak)
    vram = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0  # no VRAM on CPU
    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {train_time:.1f}")
    print(f"total_seconds:    {time.time() - t_start:.1f}")
    print(f"peak_vram_mb:     {vram:.1f}")
    print(f"mfu_percent:      {mfu:.2f}")
    print(f"total_tokens_M:   {tokens / 1e6:.1f}")
    print(f"num_steps:        {step}")
    print(f"num_params_M:     {num_params / 1e6:.1f}")
    print(f"depth:            {cfg.depth}")
    print(f"scale:            {scale.name}", flush=True)  # which scale ran: results compare within one


if __name__ == "__main__":
    main()
