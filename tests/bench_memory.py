"""The README's "will it fit" table (not a pytest test; run from the repo root): python tests/bench_memory.py

The memory plan of algorithms/memory.py, the code every run prints before its first step, for GRPO with the
defaults a pretrained model gets on a GPU (bf16; 32 prompts x 8 samples of up to 512 new tokens; micro-batches of
4 rows; β = 0.001, so a reference model) and prompts of 256 tokens (GSM8K's questions in a chat template with the
instruction), on GPUs of 24, 48 and 80 GB (taken as GiB, as the cards have) with 1 GiB of each left to the CUDA
context. Where the defaults do not fit,
the column shows the flags that the refusal line would propose.

No model hub here: the shapes are the models' published hyperparameters, as in their config.json on the Hugging Face
hub (Qwen/Qwen2.5-{0.5B,1.5B,3B,7B}, meta-llama/Llama-3.2-{1B,3B}) and the Qwen2.5 technical report
(arXiv 2412.15115, Table 1: layers, query / key-value heads, tied embeddings).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minireason as M
from algorithms import memory

# name: hidden, layers, query heads, key-value heads, head_dim, intermediate, vocab, tied embeddings
SHAPES = {
    "Qwen2.5-0.5B": memory.Shape(896, 24, 14, 2, 64, 4864, 151936, True),
    "Qwen2.5-1.5B": memory.Shape(1536, 28, 12, 2, 128, 8960, 151936, True),
    "Qwen2.5-3B": memory.Shape(2048, 36, 16, 2, 128, 11008, 151936, True),
    "Qwen2.5-7B": memory.Shape(3584, 28, 28, 4, 128, 18944, 152064, False),
    "Llama-3.2-1B": memory.Shape(2048, 16, 32, 8, 64, 8192, 128256, True),
    "Llama-3.2-3B": memory.Shape(3072, 28, 24, 8, 128, 8192, 128256, True),
}
PROMPT_TOKENS, HELD_OUT = 256, 500
GPUS_GB = (24, 48, 80)
SETTINGS = {"defaults": [], "--grad-checkpointing": ["--grad-checkpointing"],
            "--lora 16 --grad-checkpointing": ["--lora", "16", "--grad-checkpointing"]}


def planned(shape, flags):
    cfg = M.parse_args(["--model", "a-pretrained-model", "--device", "cuda", "--dtype", "bf16", *flags])
    return cfg, memory.plan(shape, cfg, PROMPT_TOKENS, HELD_OUT, M.LOGITS_PER_CHUNK).total


def main():
    print("| model | parameters | " + " | ".join(f"`{name}`" if flags else name for name, flags in SETTINGS.items())
          + " | " + " | ".join(f"{gb} GB GPU" for gb in GPUS_GB) + " |")
    print("|---" * (2 + len(SETTINGS) + len(GPUS_GB)) + "|")
    for name, shape in SHAPES.items():
        cells = [name, f"{memory.parameter_count(shape) / 1e9:.2f} B"]
        cells += [f"{planned(shape, flags)[1] / memory.GiB:.1f} GiB" for flags in SETTINGS.values()]
        cfg, total = planned(shape, [])
        for gb in GPUS_GB:
            available = (gb - 1) * memory.GiB
            fix = None if total <= available else memory.fitting_flags(shape, cfg, PROMPT_TOKENS, HELD_OUT,
                                                                         M.LOGITS_PER_CHUNK, available)
            cells.append("fits" if total <= available else f"`{memory.flag_text(fix[0])}`" if fix else "no")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
