"""The GPT template on one GPU: the baseline train.py for the full budget, then the judge's evaluation.

One prepared script for a machine with a GPU (NVIDIA through CUDA, AMD through ROCm):
1. picks the scale from the hardware as a run would (prepare.pick_scale), or takes --scale;
2. prepares the data once (`python prepare.py`), timed apart; with no network it falls back to the
   offline Shakespeare corpus at the same scale and says so (val_bpb is then not comparable with the
   original's web-text figure, ~0.998 at 300 s on an H100);
3. runs `python train.py` for --budget seconds of training exactly as the harness does, saving the
   checkpoint, and reads its summary block: tokens/s, MFU, peak VRAM, val_bpb (in-process);
4. runs the judge, `python prepare.py evaluate --checkpoint ...` (model server, causality probes),
   timed: the evaluation's time and the judged val_bpb;
and ends with one line of JSON. On a machine without CUDA it says so and prints a JSON line with
"skipped" (exit status 0): nothing here is measured on a CPU (benchmarks/gpt_cpu.py is for that).

    python benchmarks/gpt_gpu.py [--budget 300] [--scale gpu] [--eval-max-tokens N] [--data webtext]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1] / "src" / "autoresearch" / "templates" / "gpt"


def run(cmd: list[str], env: dict, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    out = subprocess.run(cmd, cwd=TEMPLATE, env=env, capture_output=True, text=True, timeout=timeout)
    return out, time.monotonic() - t0


def ask(code: str, env: dict | None = None):
    """A JSON answer from the template's modules, computed in a child process: the CUDA context that
    detecting the card creates then does not stay in this process, holding memory during training."""
    prog = (f"import sys; sys.path.append({str(TEMPLATE)!r}); import json, dataclasses, prepare, train; "
            f"print(json.dumps({code}))")  # explicit path: works under PYTHONSAFEPATH=1 too
    out = subprocess.run([sys.executable, "-c", prog], cwd=TEMPLATE, env=env, capture_output=True, text=True,
                         timeout=300)
    if out.returncode:
        sys.exit(f"asking the template for {code} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fail(stage: str, out: subprocess.CompletedProcess, result: dict) -> None:
    print(f"{stage} failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}", flush=True)
    print(json.dumps(result | {"failed": stage, "exit_code": out.returncode}))
    sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=300.0, help="training seconds (the original's 300)")
    p.add_argument("--scale", default=None, help="a scale of prepare.SCALES; default: picked from the hardware")
    p.add_argument("--data", default=None, help="shakespeare | tinystories | webtext; default: the scale's")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--eval-max-tokens", type=int, default=None,
                   help="validation tokens the judge scores (default: the scale's; fewer for a short session)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds each stage may take")
    args = p.parse_args()

    result = {"benchmark": "gpt_gpu", "date": datetime.datetime.now().isoformat(timespec="seconds")}
    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing to measure")
        print(json.dumps(result | {"skipped": "torch is not installed"}))
        return
    if not torch.cuda.is_available():
        print(f"no CUDA device here (torch {torch.__version__}): the GPU figures need a GPU; skipped. "
              "For the CPU figures: python benchmarks/gpt_cpu.py")
        print(json.dumps(result | {"skipped": "no CUDA device", "torch": torch.__version__}))
        return

    hw = ask("dataclasses.asdict(prepare.detect_hardware())")
    scale = args.scale or ask(f"prepare.pick_scale(prepare.Hardware(**{hw!r}))")
    result |= {"device": hw["name"], "total_gib": round(hw["total_gib"], 1), "free_gib": round(hw["free_gib"], 1),
               "capability": list(hw["capability"]), "rocm": hw["rocm"], "torch": torch.__version__,
               "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None), "scale": scale,
               "budget_s": args.budget, "seed": args.seed}
    cc = "ROCm" if hw["rocm"] else "%d.%d" % tuple(hw["capability"])
    print(f"{hw['name']}: {hw['free_gib']:.1f} of {hw['total_gib']:.1f} GiB free, compute capability {cc}; "
          f"torch {torch.__version__}; scale {scale}", flush=True)
    env = dict(os.environ, AUTORESEARCH_SCALE=scale, PYTHONUNBUFFERED="1")
    env.pop("AUTORESEARCH_DEVICE", None)
    data = args.data or ask(f"prepare.SCALES[{scale!r}].data")
    env["AUTORESEARCH_DATA"] = data

    out, secs = run([sys.executable, "prepare.py"], env, args.timeout)
    if out.returncode and args.data is None and data != "shakespeare":
        print(f"preparing {data} failed (no network?): {out.stderr.strip().splitlines()[-1:]}; "
              "falling back to the offline Shakespeare corpus at the same scale", flush=True)
        data = env["AUTORESEARCH_DATA"] = "shakespeare"
        out, secs = run([sys.executable, "prepare.py"], env, args.timeout)
    result |= {"data": data, "prepare_s": round(secs, 1)}
    if out.returncode:
        fail("prepare", out, result)
    print(f"data {data} prepared in {secs:.1f}s", flush=True)

    ckpt = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpt_gpu_{os.getpid()}.pt"
    env_train = env | {"AUTORESEARCH_BUDGET_S": str(args.budget), "AUTORESEARCH_SEED": str(args.seed),
                       "AUTORESEARCH_CHECKPOINT": str(ckpt)}
    out, secs = run([sys.executable, "train.py"], env_train, args.budget + args.timeout)
    if out.returncode:
        fail("train", out, result)
    head = next(line for line in out.stdout.splitlines() if line.startswith("scale "))
    figures = {k: float(v) for k, v in re.findall(r"^(\w+):\s+([-\d.naife]+)$", out.stdout, re.M)}
    a, b, t = map(int, re.search(r"batch (\d+)x(\d+)x(\d+)", head).groups())
    counted = figures["num_steps"] - ask(f"train.hypers({scale!r})['warmup_steps']", env | {"CUDA_VISIBLE_DEVICES": ""})
    tokens_per_s = counted * a * b * t / figures["training_seconds"]
    print(head, flush=True)
    result |= {"run": head, "train_wall_s": round(secs, 1), "tokens_per_s": round(tokens_per_s),
               "mfu_percent": figures["mfu_percent"], "peak_vram_mb": figures["peak_vram_mb"],
               "val_bpb_in_process": figures["val_bpb"], "num_steps": int(figures["num_steps"]),
               "num_params_M": figures["num_params_M"], "training_seconds": figures["training_seconds"],
               "total_seconds": figures["total_seconds"]}
    print(f"tokens/s {tokens_per_s:,.0f} | MFU {figures['mfu_percent']:.1f}% | peak VRAM "
          f"{figures['peak_vram_mb']:,.0f} MiB | val_bpb {figures['val_bpb']:.4f} (in-process) | "
          f"{figures['num_steps']:.0f} steps in {figures['training_seconds']:.1f}s of training", flush=True)

    cmd = [sys.executable, "prepare.py", "evaluate", "--checkpoint", str(ckpt)]
    if args.eval_max_tokens:
        cmd += ["--max-tokens", str(args.eval_max_tokens)]
    out, secs = run(cmd, env, args.timeout)
    ckpt.unlink(missing_ok=True)
    result["eval_s"] = round(secs, 1)
    if out.returncode:
        fail("evaluate", out, result)
    judged = float(re.findall(r"^val_bpb: (\S+)", out.stdout, re.M)[-1])
    causal = next(line for line in out.stdout.splitlines() if line.startswith("causal:"))
    result |= {"val_bpb": judged, "causal": causal, "eval_max_tokens": args.eval_max_tokens}
    print(f"judged val_bpb {judged:.6f} in {secs:.1f}s ({causal})", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
