"""The GPT template on the CPU: speed against a plain nanoGPT-style loop, and val_bpb after a budget.

Measures, one training at a time (two at once on 2 cores spoil both):
1. tokens/s of train.py's training step (its model, optimizers and loader) and of a plain
   nanoGPT-style loop (LayerNorm, learned positions, GELU, tied embeddings, AdamW) of the same depth,
   width, heads, batch and sequence length on the same data through the same loader. Steps alternate
   one for one and a low quantile of step times counts, so other work on a shared machine hurts neither;
2. val_bpb of train.py, run as the harness runs it, after `--budget` seconds for each seed (mean and
   sample sd), and of the plain loop for the first seed, for context. These depend on how many steps
   fit in the budget: on a shared machine they are worse than on an idle one (steps are printed).
Prints the figures and ends with one line of JSON.

    python benchmarks/gpt_cpu.py [--budget 60] [--seeds 1 2 3] [--speed-budget 15]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1] / "src" / "autoresearch" / "templates" / "gpt"


def run_train_py(budget: float, seed: int) -> dict:
    env = dict(os.environ, AUTORESEARCH_BUDGET_S=str(budget), AUTORESEARCH_SEED=str(seed), AUTORESEARCH_SCALE="cpu")
    out = subprocess.run([sys.executable, "train.py"], cwd=TEMPLATE, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"train.py failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    figures = {k: float(v) for k, v in re.findall(r"^(\w+):\s+([-\d.]+)$", out.stdout, re.M)}
    a, b, t = map(int, re.search(r"batch (\d+)x(\d+)x(\d+)", out.stdout).groups())
    sys.path.insert(0, str(TEMPLATE))
    import train  # import-safe: only for the number of uncounted warm-up steps

    counted = figures["num_steps"] - train.hypers("cpu")["warmup_steps"]
    figures["tokens_per_s"] = counted * a * b * t / figures["training_seconds"]
    return figures


def run_baseline(budget: float, seed: int) -> dict:
    """The plain loop, in a child process like train.py, so both start from the same state."""
    out = subprocess.run([sys.executable, __file__, "--_baseline", str(budget), str(seed)],
                         capture_output=True, text=True, env=dict(os.environ, AUTORESEARCH_SCALE="cpu"))
    if out.returncode:
        sys.exit(f"baseline failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def plain_model(V: int, T: int, d: int, H: int, L: int):
    """nanoGPT's recipe: LayerNorm, learned positions, GELU MLP, tied embeddings, biases."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x):
            B, T_, _ = x.shape
            q, k, v = (t.view(B, T_, H, d // H).transpose(1, 2) for t in self.qkv(self.ln1(x)).split(d, -1))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T_, d)
            x = x + self.proj(y)
            return x + self.mlp(self.ln2(x))

    class NanoGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, d), nn.Embedding(T, d)
            self.blocks = nn.Sequential(*[Block() for _ in range(L)])
            self.ln_f = nn.LayerNorm(d)
            for m in self.modules():  # nanoGPT's initialisation
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)

        def forward(self, idx, targets=None):
            x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
            logits = self.ln_f(self.blocks(x)) @ self.wte.weight.T  # tied embeddings
            if targets is None:
                return logits
            return F.cross_entropy(logits.view(-1, V), targets.reshape(-1))

    model = NanoGPT()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)


def _setup():
    import torch

    sys.path.insert(0, str(TEMPLATE))
    import prepare
    import train

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    h, data = train.hypers("cpu"), prepare.prepare(prepare.SCALES["cpu"])
    return torch, prepare, train, h, data


def speed(seconds: float) -> tuple[float, float]:
    """Tokens/s of train.py's training step and of the plain loop's, steps interleaved one for one so
    both see the same machine; from a low quantile of each one's step times."""
    import dataclasses

    torch, prepare, train, h, data = _setup()
    torch.manual_seed(0)
    cfg = train.GPTConfig(data.vocab_size, data.seq_len, h["depth"], h["d_model"], h["n_heads"], train.WINDOW_PATTERN)
    ours = train.build_model(dataclasses.asdict(cfg))
    ours_opts = train.make_optimizers(ours)
    plain, plain_opt = plain_model(data.vocab_size, data.seq_len, h["d_model"], h["n_heads"], h["depth"])
    loader = prepare.make_loader(data, h["batch_tokens"] // data.seq_len, "cpu", 0)

    def step(model, opts):
        x, y = next(loader)
        t0 = time.perf_counter()
        model(x, y).backward()
        for opt in opts:
            opt.step()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, x.numel()

    times = {"ours": [], "plain": []}
    start = time.perf_counter()
    while time.perf_counter() - start < 2 * seconds or len(times["ours"]) < 10:
        times["ours"].append(step(ours, ours_opts))
        times["plain"].append(step(plain, [plain_opt]))
    # 20th percentile of step times: bursts of other work on a shared machine inflate the upper
    # quantiles (even the median) by several times; the low quantiles are steps that ran alone.
    rate = lambda ts: ts[0][1] / statistics.quantiles([t for t, _ in ts[3:]], n=5)[0]  # skip warm-up
    return rate(times["ours"]), rate(times["plain"])


def baseline(budget: float, seed: int) -> dict:
    """The plain loop for `budget` training seconds, then evaluate_bpb: nanoGPT's AdamW, cosine decay."""
    torch, prepare, _, h, data = _setup()
    torch.manual_seed(seed)
    model, opt = plain_model(data.vocab_size, data.seq_len, h["d_model"], h["n_heads"], h["depth"])
    loader = prepare.make_loader(data, h["batch_tokens"] // data.seq_len, "cpu", seed)
    steps, spent = 0, 0.0
    while spent < budget:
        t0 = time.time()
        for g in opt.param_groups:  # cosine decay over the time budget, like nanoGPT's over iterations
            g["lr"] = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * min(1.0, spent / budget)))
        x, y = next(loader)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        steps += 1
        if steps > h["warmup_steps"]:
            spent += time.time() - t0
    return {"val_bpb": prepare.evaluate_bpb(model, data, "cpu"), "num_steps": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=60.0, help="training seconds for the val_bpb figures")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--speed-budget", type=float, default=15.0, help="seconds of steps per model for tokens/s")
    p.add_argument("--no-baseline-bpb", action="store_true", help="skip the plain loop's val_bpb run")
    p.add_argument("--_baseline", nargs=2, type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._baseline:
        print(json.dumps(baseline(args._baseline[0], int(args._baseline[1]))))
        return

    import torch

    sys.path.insert(0, str(TEMPLATE))
    import prepare

    prepare.prepare(prepare.SCALES["cpu"])  # build the cache first, outside any timing
    print(f"torch {torch.__version__}, {len(os.sched_getaffinity(0))} CPU threads, scale cpu, "
          f"load average {os.getloadavg()[0]:.1f} (figures are only comparable on an otherwise idle machine)")
    ours, plain = speed(args.speed_budget)
    print(f"tokens/s (steps interleaved for {2 * args.speed_budget:g}s): train.py {ours:,.0f} | "
          f"plain nanoGPT loop {plain:,.0f} | ratio {ours / plain:.2f}")
    bpbs, steps = [], []
    for seed in args.seeds:
        r = run_train_py(args.budget, seed)
        bpbs.append(r["val_bpb"])
        steps.append(int(r["num_steps"]))
        print(f"seed {seed}: val_bpb {r['val_bpb']:.4f} after {r['training_seconds']:.1f}s "
              f"({r['num_steps']:.0f} steps, {r['tokens_per_s']:,.0f} tok/s)")
    mean, sd = statistics.mean(bpbs), statistics.stdev(bpbs) if len(bpbs) > 1 else 0.0
    print(f"train.py val_bpb after {args.budget:g}s: {mean:.4f} ± {sd:.4f} (n={len(bpbs)})")
    result = {"budget_s": args.budget, "seeds": args.seeds, "val_bpb": bpbs, "val_bpb_mean": mean, "val_bpb_sd": sd, "num_steps": steps,
              "train_py_tokens_per_s": ours, "plain_tokens_per_s": plain, "speed_ratio": ours / plain,
              "threads": len(os.sched_getaffinity(0)), "torch": torch.__version__,
              "load_avg_1m_at_end": os.getloadavg()[0]}  # > threads means others shared the cores
    if not args.no_baseline_bpb:
        b = run_baseline(args.budget, args.seeds[0])
        result["plain_val_bpb"], result["plain_num_steps"] = b["val_bpb"], b["num_steps"]
        print(f"plain nanoGPT loop val_bpb after {args.budget:g}s (seed {args.seeds[0]}): {b['val_bpb']:.4f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
