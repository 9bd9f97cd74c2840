"""The hand-written sampler against HF's model.generate, its masks, and its sampling distribution."""
import copy
import math

import pytest
import torch

import minireason as M

QUESTIONS = ["1+2", "7-3*4+2", "9*9", "5/3-1*2", "8"]


def encode(tokenizer, questions):
    return [M.encode_prompt(tokenizer, q, "") for q in questions]


def hf_greedy(model, prompts, pad_id, eos_id, max_new_tokens):
    ids, mask = M.pad(prompts, pad_id, left=True)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                         eos_token_id=eos_id, pad_token_id=pad_id)
    return out[:, ids.size(1):]


def frequent_token(tokens):
    """A token that some rows produce mid-way and others never: as EOS it ends rows at different steps."""
    counts = torch.bincount(tokens[:, 1:].flatten())
    for token in counts.argsort(descending=True).tolist():
        rows_with = (tokens[:, 1:] == token).any(1)
        if 0 < rows_with.sum() < len(tokens):
            return token
    raise AssertionError("no token splits the rows")


@pytest.mark.parametrize("prefill_positions", [2048, 1])  # all prompts in one prefill, or one prompt per prefill
def test_greedy_equals_generate_with_rows_stopping_at_different_steps(tiny, monkeypatch, prefill_positions):
    monkeypatch.setattr(M, "PREFILL_POSITIONS", prefill_positions)
    model, tokenizer = tiny
    prompts, pad = encode(tokenizer, QUESTIONS + QUESTIONS[:2]), tokenizer.pad_token_id  # two prompts twice
    free_run = hf_greedy(model, prompts, pad, None, 24)
    eos = frequent_token(free_run)
    expected = hf_greedy(model, prompts, pad, eos, 24)
    _, _, response_ids, response_mask, stopped, _, _ = M.sample(model, prompts, 24, eos, pad, temperature=0)
    for row in range(len(prompts)):
        n = int(response_mask[row].sum())
        hf_row = expected[row].tolist()
        hf_len = hf_row.index(eos) + 1 if eos in hf_row else len(hf_row)
        assert response_ids[row, :n].tolist() == hf_row[:hf_len]
        assert bool(stopped[row]) == (eos in hf_row)
    assert stopped.any() and not stopped.all()


@pytest.mark.parametrize("prefill_positions", [2048, 30])  # one forward, or groups of one or two rows
def test_prefill_equals_one_forward_over_the_padded_batch(tiny, monkeypatch, prefill_positions):
    model, tokenizer = tiny
    prompts = encode(tokenizer, QUESTIONS + QUESTIONS[1:3])  # two prompts twice: each distinct one runs once
    ids, mask = M.pad(prompts, tokenizer.pad_token_id, left=True)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, position_ids=M.position_ids(mask), use_cache=True)
    monkeypatch.setattr(M, "PREFILL_POSITIONS", prefill_positions)
    with torch.no_grad():
        logits, cache = M.prefill(model, ids, mask, max_new_tokens=5)
    torch.testing.assert_close(logits, full.logits[:, -1], atol=1e-5, rtol=1e-5)
    real = mask.bool()
    for ours, theirs in zip(cache.layers, full.cache.layers):
        assert ours.key_buffer.shape[2] == ids.size(1) + 5 and ours.get_seq_length() == ids.size(1)
        for got, expected in ((ours.keys, theirs.keys), (ours.values, theirs.values)):  # (B, heads, P, head_dim)
            got, expected = got.transpose(1, 2), expected.transpose(1, 2)
            torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)  # each row's tokens in place


def test_response_mask_covers_eos_even_when_pad_is_eos(tiny):
    model, tokenizer = tiny
    prompts = encode(tokenizer, QUESTIONS)
    eos = frequent_token(hf_greedy(model, prompts, tokenizer.pad_token_id, None, 24))
    # pad == eos, as in many real tokenizers: the mask must still include the EOS token itself
    _, _, ids, mask, stopped, _, _ = M.sample(model, prompts, 24, eos, pad_id=eos, temperature=0)
    for row in range(len(prompts)):
        n = int(mask[row].sum())
        assert mask[row, :n].eq(1).all() and mask[row, n:].eq(0).all()
        if stopped[row]:
            assert ids[row, n - 1] == eos and (ids[row, :n - 1] != eos).all()
        else:
            assert n == 24


def test_prompt_padding_and_positions():
    ids, mask = M.pad([[5, 6, 7], [8]], pad_id=0, left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert M.position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_top_k_one_and_tiny_top_p_are_greedy(tiny):
    model, tokenizer = tiny
    prompts, pad, eos = encode(tokenizer, QUESTIONS), tokenizer.pad_token_id, tokenizer.eos_token_id
    greedy = M.sample(model, prompts, 12, eos, pad, temperature=0)[2]
    torch.manual_seed(0)
    assert torch.equal(M.sample(model, prompts, 12, eos, pad, temperature=1.0, top_k=1)[2], greedy)
    assert torch.equal(M.sample(model, prompts, 12, eos, pad, temperature=1.0, top_p=1e-6)[2], greedy)


def test_sampling_follows_the_model_distribution(tiny):
    model, tokenizer = tiny
    peaked = copy.deepcopy(model)  # a fresh model is nearly uniform: sharpen it so a wrong draw shows
    with torch.no_grad():
        peaked.model.norm.weight.mul_(12)
    prompt = encode(tokenizer, ["3*4"])[0]
    with torch.no_grad():
        probs = (peaked(torch.tensor([prompt])).logits[0, -1] / 0.7).softmax(-1)
    assert probs.max() > 0.2
    torch.manual_seed(0)
    n = 4000
    first = M.sample(peaked, [prompt] * n, 1, tokenizer.eos_token_id, tokenizer.pad_token_id, temperature=0.7)[2][:, 0]
    freq = torch.bincount(first, minlength=len(probs)).float() / n
    assert (freq - probs).abs().max() < 0.03


def test_sampled_logprobs_and_entropy_equal_a_scoring_pass(tiny):
    model, tokenizer = tiny
    torch.manual_seed(0)
    prompts = [p for p in encode(tokenizer, QUESTIONS) for _ in range(2)]  # groups of two, as in GRPO
    prompt_ids, prompt_mask, ids, mask, stopped, logprobs, entropy = M.sample(
        model, prompts, 16, tokenizer.eos_token_id, tokenizer.pad_token_id, temperature=0.7,
        top_k=5)  # log-probs are of the tempered policy before top-k, as the update computes them
    rollout = M.Rollout(prompt_ids, prompt_mask, ids, mask, group_size=1)
    scored_logprobs, scored_entropy, _ = M.score(model, rollout, 0.7, micro_batch=2)
    torch.testing.assert_close(logprobs, scored_logprobs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, scored_entropy, atol=1e-5, rtol=1e-5)
    assert logprobs[mask == 0].eq(0).all() and logprobs[mask == 1].lt(0).all()


def test_inverse_cdf_never_draws_a_token_of_probability_zero(monkeypatch):
    logits = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf")]])  # the last token is impossible
    # u at the very top of [0, 1): still inside the last token of nonzero probability, not past it
    monkeypatch.setattr(torch, "rand_like", lambda t: torch.full_like(t, 1 - 2 ** -24))
    assert M.next_tokens(logits, 1.0, 0, 1.0)[0].tolist() == [2]
    monkeypatch.setattr(torch, "rand_like", torch.zeros_like)  # u = 0: the first token of nonzero probability
    assert M.next_tokens(logits[:, 1:], 1.0, 0, 1.0)[0].tolist() == [1]


def test_top_p_keeps_the_smallest_set_covering_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.manual_seed(0)
    draws = torch.stack([M.next_tokens(logits, 1.0, 0, 0.75)[0] for _ in range(2000)])
    # 0.5 + 0.3 covers 0.75: only tokens 0 and 1 can be drawn, in proportion 5:3
    assert set(draws.flatten().tolist()) == {0, 1}
    assert (draws == 0).float().mean().item() == pytest.approx(0.5 / 0.8, abs=0.04)


def test_top_p_counts_the_mass_top_k_left_and_logprobs_are_before_both():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]])).expand(500, 4)
    tokens, logprobs, entropy = M.next_tokens(logits, 1.0, 2, 0.5)
    # top-k 2 leaves 0.4 and 0.3, renormalized 4/7 and 3/7: token 0 alone covers half of that
    # (of the full distribution it would cover 0.4 < 0.5, and token 1 would stay)
    assert tokens.eq(0).all()
    torch.testing.assert_close(logprobs, torch.full((500,), math.log(0.4)))
    torch.testing.assert_close(entropy, torch.full((500,), -sum(p * math.log(p) for p in (0.4, 0.3, 0.2, 0.1))))
