"""Log-probs through the LM head a chunk at a time: the same values and gradients as the full log-softmax."""
import pytest
import torch

import minireason as M


@pytest.mark.parametrize("bias", [False, True])  # a biased head: the temperature divides the bias too
def test_chunked_logprobs_match_the_full_log_softmax(monkeypatch, bias):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias)
    if bias:
        torch.nn.init.normal_(head.bias, std=3.0)  # large enough that a wrong bias scaling shows
    hidden = torch.randn(37, 16, requires_grad=True)
    tokens = torch.randint(0, 50, (37,))
    weights = torch.randn(37)  # an arbitrary loss on the log-probs, so every gradient path is exercised

    logits = head(hidden) / 0.7
    full = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
    (full * weights).sum().backward()
    expected = [t.grad.clone() for t in (hidden, *head.parameters())]
    hidden.grad = None
    head.zero_grad(set_to_none=True)

    monkeypatch.setattr(M, "LOGITS_PER_CHUNK", 8 * 50)  # chunks of 8 rows: 5 chunks, the last one short
    logprobs, entropy = M.token_logprobs(hidden, head, tokens, 0.7, with_entropy=True)
    (logprobs * weights).sum().backward()
    assert torch.allclose(logprobs, full, atol=1e-6)
    for t, grad in zip((hidden, *head.parameters()), expected):
        assert torch.allclose(t.grad, grad, atol=1e-6)
    p = torch.softmax(logits, -1)
    assert torch.allclose(entropy, -(p * p.log()).sum(-1), atol=1e-5)


def test_rows_sharing_a_prompt_get_the_logprobs_and_gradients_of_one_sequence_per_row(tiny):
    """response_logprobs runs each distinct prompt once and its rows' responses on its KV cache; the result
    must be what one forward over each row's prompt + response gives, gradients included."""
    model, tokenizer = tiny
    torch.manual_seed(0)
    prompts = [M.encode_prompt(tokenizer, q, "") for q in ("7-3*4+2", "9*9")]  # different lengths: one is padded
    prompt_ids, prompt_mask = M.pad([prompts[0]] * 3 + [prompts[1]] * 3, tokenizer.pad_token_id, left=True)
    response_ids, response_mask = M.pad([torch.randint(3, 20, (n,)).tolist() for n in (5, 9, 2, 9, 1, 7)],
                                        tokenizer.pad_token_id)
    response_mask = response_mask.float()
    batch = M.Rollout(prompt_ids, prompt_mask, response_ids, response_mask, group_size=3)
    weights = torch.randn(response_mask.shape)
    P = prompt_ids.size(1)

    def gradients(logprobs):
        model.zero_grad()
        (logprobs * weights).sum().backward()
        return [p.grad.clone() for p in model.parameters()]
    ids = torch.cat([prompt_ids, response_ids], 1)
    mask = torch.cat([prompt_mask, response_mask.long()], 1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=M.position_ids(mask)).logits[:, P - 1:-1]
    expected = logits.log_softmax(-1).gather(-1, response_ids[..., None]).squeeze(-1) * response_mask
    expected_gradients = gradients(expected)

    logprobs = M.response_logprobs(model, batch, 1.0)[0]
    assert torch.allclose(logprobs, expected, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(gradients(logprobs), expected_gradients))
    model.zero_grad(set_to_none=True)  # the model is shared with other tests


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_log_softmax_at_has_autograds_values_and_gradient_in_the_logits_dtype(dtype, atol):
    """LogSoftmaxAt's backward, the kept log-softmax turned into the gradient in place, against autograd's."""
    torch.manual_seed(0)
    logits = (3 * torch.randn(6, 11)).to(dtype).requires_grad_()
    tokens = torch.tensor([0, 3, 3, 10, 5, 7])  # a token repeated across rows: each row has its own gradient
    g = torch.randn(6)
    expected = logits.float().log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
    (expected_grad,) = torch.autograd.grad((expected * g).sum(), logits)
    logprobs = M.LogSoftmaxAt.apply(logits, tokens)
    (grad,) = torch.autograd.grad((logprobs * g).sum(), logits)
    assert logprobs.dtype == torch.float32 and torch.allclose(logprobs, expected, atol=1e-6)
    assert grad.dtype == dtype and torch.allclose(grad.float(), expected_grad.float(), atol=atol)
