"""Log-probs through the LM head a chunk at a time: the same values and gradients as the full log-softmax."""
import torch

import minireason as M


def test_chunked_logprobs_match_the_full_log_softmax(monkeypatch):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(37, 16, requires_grad=True)
    tokens = torch.randint(0, 50, (37,))
    weights = torch.randn(37)  # an arbitrary loss on the log-probs, so every gradient path is exercised

    logits = head(hidden) / 0.7
    full = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
    (full * weights).sum().backward()
    expected = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None

    monkeypatch.setattr(M, "LOGITS_PER_CHUNK", 8 * 50)  # chunks of 8 rows: 5 chunks, the last one short
    logprobs, entropy = M.token_logprobs(hidden, head, tokens, 0.7, with_entropy=True)
    (logprobs * weights).sum().backward()
    assert torch.allclose(logprobs, full, atol=1e-6)
    assert torch.allclose(hidden.grad, expected[0], atol=1e-6) and torch.allclose(head.weight.grad, expected[1], atol=1e-6)
    p = torch.softmax(logits, -1)
    assert torch.allclose(entropy, -(p * p.log()).sum(-1), atol=1e-5)
