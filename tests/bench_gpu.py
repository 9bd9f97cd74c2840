"""The GPU check, as one command on a machine with a CUDA GPU (not a pytest test; run from the repo root):

    python tests/bench_gpu.py                      # a Qwen2.5-0.5B-shaped model in bf16 on cuda
    python tests/bench_gpu.py --shape small --device cpu --dtype fp32   # the same steps, small, to try it here

No model hub: the model is built from Qwen2.5-0.5B's published shape (tests/bench_memory.py's SHAPES) with random
weights and minireason's character tokenizer, so it writes nonsense, but every tensor has the real model's size.
Three steps, each in a process of its own so each has its own memory peak:
  1. tests/bench_sampler.py on it: minireason's sampler against `model.generate`, greedy tokens and tokens/s;
  2. one GRPO step of minireason.py on the built-in arithmetic task (--sft-steps 0), which prints the memory plan
     before loading and the measured peak (torch.cuda.max_memory_allocated on a GPU) at the end;
  3. the plan's total against that peak, as a ratio.
The last line is a JSON object with the figures.
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from algorithms import models  # noqa: E402

SHAPES = {  # hidden, layers, query heads, key-value heads, intermediate, vocab (Qwen2.5-0.5B's config.json)
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, vocab_size=151936),
    "small": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=256, vocab_size=4096),
}


def build(path, shape):
    """A Qwen2 model of `shape` with random weights and the character tokenizer, saved as an HF folder."""
    tokenizer = models.build_char_tokenizer()
    config = transformers.Qwen2Config(**shape, tie_word_embeddings=True, max_position_embeddings=4096,
                                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                      bos_token_id=None)
    torch.manual_seed(0)
    models.save_checkpoint_folder(Path(path), transformers.Qwen2ForCausalLM(config), tokenizer)


def gib(text):
    """'1.23 GiB' or '456 MiB' -> GiB."""
    value, unit = re.match(r"([\d.]+) (GiB|MiB)", text).groups()
    return float(value) / (1 if unit == "GiB" else 1024)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=SHAPES, default="qwen2.5-0.5b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        build(model, SHAPES[args.shape])
        sampler = subprocess.run([sys.executable, str(ROOT / "tests/bench_sampler.py"), "--model", str(model),
                                  "--dtype", args.dtype, "--rows", "64", "--new-tokens", "128", "--device",
                                  args.device], capture_output=True, text=True)
        print(sampler.stdout + sampler.stderr[-2000:] if sampler.returncode else sampler.stdout)
        step = subprocess.run([sys.executable, str(ROOT / "minireason.py"), "--model", str(model), "--sft-steps", "0",
                               "--steps", "1", "--prompts-per-step", "32", "--group-size", "8", "--max-new-tokens",
                               "128", "--micro-batch", "8", "--eval-limit", "64", "--no-sft-baseline", "--device",
                               args.device, "--dtype", args.dtype, "--out", str(Path(tmp) / "run")],
                              capture_output=True, text=True)
        print(step.stdout + step.stderr[-2000:] if step.returncode else step.stdout)
    planned = re.search(r"peak: .*?([\d.]+ (?:GiB|MiB)) of", step.stdout)
    measured = re.search(r"peak memory\s+([\d.]+ (?:GiB|MiB))", step.stdout)
    figures = dict(shape=args.shape, device=args.device, dtype=args.dtype,
                   sampler=json.loads(sampler.stdout.strip().splitlines()[-1]) if sampler.returncode == 0 else None,
                   step_ok=step.returncode == 0)
    if planned and measured:
        figures.update(planned_gib=round(gib(planned.group(1)), 3), measured_gib=round(gib(measured.group(1)), 3))
        figures["plan_over_measured"] = round(figures["planned_gib"] / figures["measured_gib"], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
