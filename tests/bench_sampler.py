"""minireason's sampler vs Hugging Face `model.generate`, same model, prompts and settings, in one process:

    python tests/bench_sampler.py --data gsm8k/test.jsonl   # SmolLM2-135M-Instruct, 64 GSM8K chat prompts x 128 tokens
    python tests/bench_sampler.py --dtype bf16           # both in bf16 weights
    python tests/bench_sampler.py --model tiny --rows 256 --new-tokens 64

Sampling at temperature 1 with no top-k / top-p, both stopping at the model's EOS ids. Tokens/s counts the
tokens each row generated up to and including its EOS (what a run trains on), over the wall time of the call.
Before timing, greedy decoding of the first 8 prompts is compared: the same tokens from both, or, for a row that
differs, how far apart generate's own two best logits were where it did (bf16 rounds logits of 16-32 to steps of
0.125, so a gap of 0 or one step is a tie either side may break by its order of summation). Each sampler
runs in a fresh process of its own, one after the other: a short warm-up call, then --repeats timed calls, of
which the fastest counts (this VM's speed drifts by 10-25 % from minute to minute, and the fastest call is the
closest to what the code itself costs; the limit below is a fastest time too). Peak memory is the rise of that
process's resident set (VmHWM) during its first timed call (in a process that has sampled before, a call reuses
the heap the last one freed, and its rise would read near zero). The matmul-bound limit is measured too: the tokens/s a
batch of --rows would reach if every weight matmul of a decode step ran as fast as one (rows x hidden) @
(hidden x intermediate) product does on this machine, and nothing else cost anything. The last line is a JSON
object.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import minireason as M  # noqa: E402
from algorithms import tasks  # noqa: E402


def peak_rise_mib(fn):
    """(result, seconds, peak resident MiB above the start) of fn()."""
    def read(field):
        return next(int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith(field + ":"))
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current resident set
    before, start = read("VmRSS"), time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # a GPU computes asynchronously: the call is over when its kernels are
    return result, time.perf_counter() - start, read("VmHWM") - before


def generated_tokens(tokens, stop):
    """Tokens up to and including the first stop token of each row (rows of `tokens`: generated ids)."""
    total = 0
    for row in tokens.tolist():
        ends = [i for i, t in enumerate(row) if t in stop]
        total += ends[0] + 1 if ends else len(row)
    return total


def matmul_bound(model, rows, dtype, device):
    """(tokens/s, GFLOP/s): the decode speed limit set by the machine's matmul speed at this batch size.
    A token costs 2 FLOPs per weight of every linear layer, the LM head included (0.27 GFLOP on SmolLM2)."""
    hidden, inner = model.config.hidden_size, model.config.intermediate_size
    x, w = torch.randn(rows, hidden, dtype=dtype, device=device), torch.randn(inner, hidden, dtype=dtype, device=device)
    seconds = []
    for _ in range(50):
        start = time.perf_counter()
        torch.nn.functional.linear(x, w)
        if device != "cpu":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    flops_per_s = 2 * rows * hidden * inner / min(seconds[10:])  # the machine's best, after warming up
    flops_per_token = 2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return flops_per_s / flops_per_token, flops_per_s / 1e9


def setup(args):
    """The model (in args.dtype), the chat prompts, and the two samplers: name -> fn(prompts, new_tokens, sample)
    returning the generated ids (rows, new tokens)."""
    torch.manual_seed(0)
    model, tokenizer = M.load_model(args.model, Path(args.cache_dir), args.device)
    if args.dtype == "bf16":
        model.to(torch.bfloat16)
    questions = [p.question for p in (tasks.read_problems(args.data) if args.data
                                      else tasks.make_arith_problems(args.rows, seed=0))][:args.rows]
    prompts = [M.encode_prompt(tokenizer, q, M.INSTRUCTION) for q in questions]
    stop, pad = M.stop_ids(model, tokenizer), tokenizer.pad_token_id

    @torch.inference_mode()
    def hf(rows, new_tokens, sample, scores=False):
        ids, mask = (t.to(args.device) for t in M.pad(rows, pad, left=True))
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=sample,
                             temperature=1.0 if sample else None, top_k=0 if sample else None,
                             top_p=1.0 if sample else None, eos_token_id=stop, pad_token_id=pad,
                             output_scores=scores, return_dict_in_generate=True)
        return (out.sequences[:, ids.size(1):], out.scores) if scores else out.sequences[:, ids.size(1):]

    def ours(rows, new_tokens, sample):
        return M.sample(model, rows, new_tokens, stop, pad, temperature=1.0 if sample else 0)[2]
    return model, prompts, stop, {"hf generate": hf, "minireason": ours}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per sampler; the fastest counts")
    p.add_argument("--data", help="a GSM8K JSONL file (default: the built-in arithmetic questions)")
    p.add_argument("--cache-dir", default=str(Path("~/.cache/minireason").expanduser()))
    p.add_argument("--device", default="cpu", help="cpu, or cuda (tests/bench_gpu.py): peak MiB stays the CPU's")
    p.add_argument("--side", choices=("hf generate", "minireason"), help=argparse.SUPPRESS)  # a child's timed call
    args = p.parse_args()
    model, prompts, stop, samplers = setup(args)
    if args.side:
        samplers[args.side](prompts[:2], 4, True)  # warm up: first-call costs are not the sampler's speed
        calls = [peak_rise_mib(lambda: samplers[args.side](prompts, args.new_tokens, True)) for _ in range(args.repeats)]
        tokens, seconds, _ = max(calls, key=lambda call: generated_tokens(call[0], stop) / call[1])
        print(json.dumps(dict(tokens=generated_tokens(tokens, stop), seconds=seconds, peak_mib=calls[0][2],
                              all_seconds=[round(call[1], 2) for call in calls])))
        return
    # Same greedy tokens (ours pads after EOS; generate pads too): compare up to each row's length. Where a row
    # differs, the gap between generate's own two best logits at that step: in bf16, logits one rounding step
    # apart (0.125 at 16-32) are a tie that any other order of summation can break.
    (a, scores), b = samplers["hf generate"](prompts[:8], 32, False, scores=True), samplers["minireason"](prompts[:8], 32, False)
    divergences = []
    for i in range(len(a)):
        n = min(generated_tokens(a[i:i + 1], stop), b.size(1))
        differ = (a[i, :n] != b[i, :n]).nonzero()
        if len(differ):
            step = int(differ[0])
            best_two = scores[step][i].float().topk(2).values
            divergences.append(dict(row=i, step=step, logit_gap=round(float(best_two[0] - best_two[1]), 4)))
    same_greedy = not divergences
    limit, gflops = matmul_bound(model, args.rows, next(model.parameters()).dtype, args.device)
    results = {}
    for name in samplers:
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--side", name], capture_output=True, text=True)
        if child.returncode:
            raise SystemExit(f"{name} failed:\n{child.stderr[-3000:]}")
        results[name] = r = json.loads(child.stdout.strip().splitlines()[-1])
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
    print(f"{args.model} ({args.dtype}), {args.rows} prompts x up to {args.new_tokens} new tokens, sampling, "
          f"{torch.get_num_threads()} threads; greedy tokens identical: {same_greedy}"
          + "".join(f"\n  row {d['row']} differs from token {d['step']} on, where generate's two best logits are "
                    f"{d['logit_gap']} apart" for d in divergences))
    print(f"{'':<12} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'peak MiB':>9}   every timed call, s")
    for name, r in results.items():
        print(f"{name:<12} {r['tokens']:7d} {r['seconds']:8.1f} {r['tokens_per_s']:9.1f} {r['peak_mib']:9.0f}   "
              + " ".join(f"{s:.1f}" for s in r["all_seconds"]))
    hf_r, our_r = results["hf generate"], results["minireason"]
    print(f"matmul-bound limit at batch {args.rows}: {limit:.0f} tokens/s ({gflops:.0f} GFLOP/s); "
          f"minireason reaches {our_r['tokens_per_s'] / limit:.0%} of it, hf generate {hf_r['tokens_per_s'] / limit:.0%}")
    print(json.dumps(dict(model=args.model, dtype=args.dtype, rows=args.rows, new_tokens=args.new_tokens,
                          same_greedy=same_greedy, greedy_divergences=divergences, hf_tokens_per_s=round(hf_r["tokens_per_s"], 1),
                          minireason_tokens_per_s=round(our_r["tokens_per_s"], 1),
                          hf_peak_mib=round(hf_r["peak_mib"]), minireason_peak_mib=round(our_r["peak_mib"]),
                          hf_seconds_all=hf_r["all_seconds"], minireason_seconds_all=our_r["all_seconds"],
                          speedup=round(our_r["tokens_per_s"] / hf_r["tokens_per_s"], 3),
                          memory_ratio=round(our_r["peak_mib"] / max(hf_r["peak_mib"], 1), 3),
                          limit_tokens_per_s=round(limit), fraction_of_limit=round(our_r["tokens_per_s"] / limit, 3))))


if __name__ == "__main__":
    main()
