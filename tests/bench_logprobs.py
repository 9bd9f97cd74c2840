"""Peak memory and time of the response log-probs: minireason's chunked LM head vs the naive full log-softmax.

    python tests/bench_logprobs.py                      # SmolLM2's LM head (576 -> 49152), 64 x 256 positions
    python tests/bench_logprobs.py --rows 16 --length 512

Both compute log π(token) for every position from the last hidden states, forward and backward through the LM
head (the part whose (positions x vocabulary) logits are the memory peak; the transformer below it is the same
for both). Naive: logits = head(h); log_softmax(logits).gather(token). minireason: token_logprobs(), which
takes the head a chunk of positions at a time and recomputes each chunk's logits in the backward pass.
Peak memory is the process's peak resident set (VmHWM), reset before each run, minus what was resident before.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import minireason as M  # noqa: E402
from bench_sampler import peak_rise_mib  # noqa: E402  (this folder is on the path when run as a script)


def measure(fn, hidden, head, tokens):
    """(seconds, peak MiB above the starting resident set, log-probs, gradient of the hidden states)."""
    hidden.grad, head.weight.grad = None, None

    def forward_backward():
        logprobs = fn(hidden, head, tokens)
        logprobs.sum().backward()
        return logprobs.detach()
    logprobs, seconds, peak = peak_rise_mib(forward_backward)
    return seconds, peak, logprobs, hidden.grad.clone()


def naive(hidden, head, tokens):
    return torch.log_softmax(head(hidden).float(), -1).gather(-1, tokens[:, None]).squeeze(-1)


def chunked(hidden, head, tokens):
    return M.token_logprobs(hidden, head, tokens, 1.0)[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--hidden", type=int, default=576, help="SmolLM2-135M: 576")
    p.add_argument("--vocab", type=int, default=49152, help="SmolLM2-135M: 49152")
    args = p.parse_args()
    torch.manual_seed(0)
    n = args.rows * args.length
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False)
    hidden = torch.randn(n, args.hidden, requires_grad=True)
    tokens = torch.randint(0, args.vocab, (n,))
    results = {}
    for name, fn in (("naive", naive), ("minireason", chunked)):  # the naive one first: its pages then are free
        results[name] = measure(fn, hidden, head, tokens)
    (t_naive, m_naive, lp_naive, g_naive), (t_ours, m_ours, lp_ours, g_ours) = results["naive"], results["minireason"]
    max_diff = max((lp_naive - lp_ours).abs().max().item(), (g_naive - g_ours).abs().max().item())
    print(f"log-probs of {args.rows} x {args.length} positions, hidden {args.hidden}, vocabulary {args.vocab}, "
          f"forward + backward, {torch.get_num_threads()} threads")
    print(f"{'':<12} {'seconds':>8} {'peak MiB':>10}")
    print(f"{'naive':<12} {t_naive:8.2f} {m_naive:10.0f}")
    print(f"{'minireason':<12} {t_ours:8.2f} {m_ours:10.0f}")
    print(f"max |difference| in log-probs and gradients: {max_diff:.2e}")
    print(json.dumps(dict(rows=args.rows, length=args.length, vocab=args.vocab, naive_seconds=round(t_naive, 3),
                          minireason_seconds=round(t_ours, 3), naive_peak_mib=round(m_naive),
                          minireason_peak_mib=round(m_ours), speedup=round(t_naive / t_ours, 3),
                          memory_ratio=round(m_ours / m_naive, 4), max_abs_difference=max_diff)))


if __name__ == "__main__":
    main()
