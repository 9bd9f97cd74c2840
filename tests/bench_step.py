"""One GRPO iteration, minireason vs TRL's GRPOTrainer: same model, questions, reward and settings.

    pip install trl==1.16.0                 # for this comparison only; never a dependency of minireason
    python tests/bench_step.py --data gsm8k/test.jsonl   # SmolLM2-135M-Instruct, fp32 on both sides
    python tests/bench_step.py --trl-defaults   # TRL as it comes: bf16 autocast and gradient checkpointing
    python tests/bench_step.py --trl-defaults --dtype bf16   # ... against minireason --dtype bf16

The settings: 8 GSM8K questions x 4 samples = 32 completions of up to 128 tokens per optimizer step (TRL:
per-device batch 8 x gradient accumulation 4; minireason: one mini-batch in micro-batches of 4), temperature 1,
top-k 0, top-p 1, β = 0 (no reference model), lr 1e-6, reward 1/0 from minireason's grader. Each side runs in a
fresh process of its own (so its peak resident memory is its own), does two iterations and times the second.
Without TRL installed, only minireason's half runs. The last line is a JSON object: "speedup" is TRL's seconds
over minireason's, "memory_ratio" minireason's peak over TRL's.
"""
import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import minireason as M  # noqa: E402
from algorithms import grpo, tasks  # noqa: E402

PROMPTS, GROUP, NEW_TOKENS, LR = 8, 4, 128, 1e-6


def problems(args, n):
    """The first n questions of --data (a GSM8K JSONL file), or of the built-in arithmetic task."""
    return tasks.read_problems(args.data)[:n] if args.data else tasks.make_arith_problems(n, seed=0)


def peak_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def minireason_side(args):
    cfg = M.parse_args(["--model", args.model, "--prompts-per-step", str(PROMPTS), "--group-size", str(GROUP),
                        "--max-new-tokens", str(NEW_TOKENS), "--lr", str(LR), "--kl-coef", "0", "--minibatches", "1",
                        "--micro-batch", str(args.micro_batch), "--dtype", args.dtype, "--device", "cpu",
                        "--cache-dir", args.cache_dir])
    torch.manual_seed(0)
    model, tokenizer = M.load_model(cfg.model, cfg.cache_dir, "cpu")
    optimizer = M.make_optimizer([model], cfg.lr)
    questions = iter(problems(args, 2 * PROMPTS))
    # as in minireason.train: in bf16 a bf16 copy samples and the fp32 weights re-score the rollout under autocast
    sampler = copy.deepcopy(model).to(torch.bfloat16) if args.dtype == "bf16" else model
    with M.precision(cfg):
        for iteration in range(2):
            start = time.perf_counter()
            rollout, _, _ = M.rl_step(model, sampler, None, None, optimizer, tokenizer,
                                      lambda n: [next(questions) for _ in range(n)], grpo, cfg)
            seconds = time.perf_counter() - start
    return dict(seconds=seconds, peak_gib=peak_gib(), tokens=int(rollout.response_mask.sum()))


def trl_side(args):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    path = M.model_path(args.model, Path(args.cache_dir))
    data = Dataset.from_list([{"prompt": [{"role": "system", "content": M.INSTRUCTION},
                                          {"role": "user", "content": p.question}], "answer": p.answer}
                              for p in problems(args, 2 * PROMPTS)])

    def reward(completions, answer, **kwargs):
        texts = [c[-1]["content"] for c in completions]
        return [float(v) for v in M.grade_batch(texts, answer, [True] * len(texts))]

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **kw):
            self.seconds = time.perf_counter() - self.start
    timer = StepTimer()
    config = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8, gradient_accumulation_steps=4,
                        num_generations=GROUP, max_completion_length=NEW_TOKENS, temperature=1.0, top_k=0, top_p=1.0,
                        beta=0.0, learning_rate=LR, max_steps=2, logging_steps=1, report_to="none", save_strategy="no",
                        use_cpu=True, seed=0, bf16=args.trl_defaults, gradient_checkpointing=args.trl_defaults,
                        shuffle_dataset=False)
    trainer = GRPOTrainer(model=path, reward_funcs=reward, args=config, train_dataset=data, callbacks=[timer])
    trainer.train()
    return dict(seconds=timer.seconds, peak_gib=peak_gib())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--trl-defaults", action="store_true", help="TRL with bf16 autocast and gradient checkpointing")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="minireason's --dtype")
    p.add_argument("--micro-batch", type=int, default=4, help="minireason's rows per forward/backward")
    p.add_argument("--data", help="a GSM8K JSONL file (default: the built-in arithmetic questions)")
    p.add_argument("--cache-dir", default=str(Path("~/.cache/minireason").expanduser()))
    p.add_argument("--side", choices=("minireason", "trl"), help=argparse.SUPPRESS)  # a child process's half
    args = p.parse_args()
    if args.side:
        print(json.dumps((minireason_side if args.side == "minireason" else trl_side)(args)))
        return
    results = {}
    for side in ("minireason", "trl"):
        if side == "trl":
            try:
                import trl  # noqa: F401
            except ImportError:
                print("TRL is not installed (pip install trl==1.16.0): its half is skipped")
                break
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--side", side], capture_output=True,
                               text=True)
        if child.returncode:
            raise SystemExit(f"{side} half failed:\n{child.stderr[-3000:]}")
        results[side] = json.loads(child.stdout.strip().splitlines()[-1])
    ours = results["minireason"]
    print(f"one GRPO iteration on {args.model}: {PROMPTS} questions x {GROUP} samples x up to {NEW_TOKENS} tokens, "
          f"{torch.get_num_threads()} threads; minireason in {args.dtype}, TRL "
          f"{'with its defaults (bf16, gradient checkpointing)' if args.trl_defaults else 'in fp32'}")
    print(f"{'':<12} {'seconds':>8} {'peak GiB':>9}")
    print(f"{'minireason':<12} {ours['seconds']:8.1f} {ours['peak_gib']:9.2f}")
    summary = dict(model=args.model, dtype=args.dtype, trl_defaults=args.trl_defaults, minireason_seconds=round(ours["seconds"], 2),
                   minireason_peak_gib=round(ours["peak_gib"], 2))
    if "trl" in results:
        theirs = results["trl"]
        print(f"{'TRL':<12} {theirs['seconds']:8.1f} {theirs['peak_gib']:9.2f}")
        summary.update(trl_seconds=round(theirs["seconds"], 2), trl_peak_gib=round(theirs["peak_gib"], 2),
                       speedup=round(theirs["seconds"] / ours["seconds"], 3),
                       memory_ratio=round(ours["peak_gib"] / theirs["peak_gib"], 3))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
