"""The hand-written sampler against HF's model.generate, its masks, and its sampling distribution."""
import contextlib
import copy
import math
import types

import pytest
import torch
import transformers

import minireason as M

QUESTIONS = ["1+2", "7-3*4+2", "9*9", "5/3-1*2", "8"]


def encode(tokenizer, questions):
    return [M.encode_prompt(tokenizer, q, "") for q in questions]


def hf_greedy(model, prompts, pad_id, eos_id, max_new_tokens):
    ids, mask = M.left_pad(prompts, pad_id)
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


@pytest.mark.parametrize("drop, shared", [(0, 3), (3, 0)])  # prompts all beginning "Q: ", or with that cut off
def test_prefill_equals_one_forward_over_the_padded_batch(tiny, monkeypatch, drop, shared):
    model, tokenizer = tiny
    prompts = [p[drop:] for p in encode(tokenizer, QUESTIONS + QUESTIONS[1:3])]  # two prompts twice
    ids, mask = M.left_pad(prompts, tokenizer.pad_token_id)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, position_ids=M.position_ids(mask), use_cache=True)
    monkeypatch.setattr(M, "PREFILL_POSITIONS", 30)  # groups of one or two rows, each cut to its own width
    forward, inputs = model.forward, []
    monkeypatch.setattr(model, "forward", lambda **kw: inputs.append(kw["input_ids"]) or forward(**kw))
    logits, cache, cache_mask = M.prefill(model, ids, mask, max_new_tokens=5)
    torch.testing.assert_close(logits, full.logits[:, -1], atol=1e-5, rtol=1e-5)
    # the shared beginning runs once, alone, and the prompts' forwards start after it
    groups = inputs[1:] if shared else inputs
    assert not shared or inputs[0].tolist() == [prompts[0][:shared]]
    assert sum(len(g) for g in groups) == 5 and max(g.size(1) for g in groups) == max(map(len, prompts)) - shared
    real, cached = mask.bool(), cache_mask.bool()
    assert torch.equal(cached.sum(-1), real.sum(-1)) and cached[:, :shared].all()
    for ours, theirs in zip(cache.layers, full.past_key_values.layers):
        assert ours.key_buffer.shape[2] == ids.size(1) + 5 and ours.get_seq_length() == ids.size(1)
        keys, expected = ours.keys.transpose(1, 2), theirs.keys.transpose(1, 2)  # (B, P, heads, head_dim)
        torch.testing.assert_close(keys[cached], expected[real], atol=1e-5, rtol=1e-5)  # each row's tokens in order


def test_shared_prefix_length_leaves_every_prompt_a_token():
    ids, mask = M.left_pad([[5, 6, 7, 8], [5, 6, 9], [5, 6, 7, 1]], 0)
    assert M.shared_prefix_length(ids, mask.sum(-1)) == 2
    ids, mask = M.left_pad([[5, 6, 7], [5, 6, 7]], 0)
    assert M.shared_prefix_length(ids, mask.sum(-1)) == 2
    ids, mask = M.left_pad([[5, 6], [4, 6, 7]], 0)
    assert M.shared_prefix_length(ids, mask.sum(-1)) == 0


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
    ids, mask = M.left_pad([[5, 6, 7], [8]], pad_id=0)
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decode_attention_equals_sdpa_and_ignores_masked_positions(dtype):
    sdpa = transformers.integrations.sdpa_attention.sdpa_attention_forward
    layer = types.SimpleNamespace(num_key_value_groups=3, is_causal=True)  # 6 query heads share 2 KV heads
    torch.manual_seed(0)
    query, key, value = torch.randn(5, 6, 1, 16), torch.randn(5, 2, 9, 16), torch.randn(5, 2, 9, 16)
    mask = torch.arange(9) >= torch.tensor([0, 2, 4, 6, 8])[:, None]  # rows left-padded by 0 to 8 positions
    key[~mask[:, None].expand_as(key[..., 0])] = 1e4  # garbage where the mask says pad
    args = [t.to(dtype) for t in (query, key, value)] + [mask[:, None, None]]
    ours, theirs = M.decode_attention(layer, *args, scaling=0.25)[0], sdpa(layer, *args, scaling=0.25)[0]
    assert ours.shape == theirs.shape == (5, 1, 6, 16) and ours.dtype == dtype
    tolerance = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=0, rtol=0)  # fp32 is SDPA
    torch.testing.assert_close(ours, theirs, **tolerance)


@pytest.mark.parametrize("weights, autocast", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)])
def test_prepacked_linears_compute_what_the_linears_do_and_are_undone_after(tiny, weights, autocast):
    model = copy.deepcopy(tiny[0]).to(weights)
    biased = torch.nn.Linear(128, 40).to(weights)  # the tiny model's layers have no bias; this one has
    torch.nn.init.uniform_(biased.bias, 1, 2)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)] + [biased]
    ids, x = torch.tensor([encode(tiny[1], QUESTIONS[:1])[0]] * 3), torch.randn(3, 5, 128, dtype=weights)
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    tolerance = dict(atol=1e-5, rtol=1e-5) if weights == torch.float32 and not autocast else dict(atol=0.05, rtol=0.05)
    with torch.inference_mode(), precision:
        expected = model(ids).logits, biased(x)
        with M.prepacked_linears(model, rows=3), M.prepacked_linears(biased, rows=3):
            assert all("forward" in vars(m) for m in linears)  # the packed matmul is what runs here
            packed = model(ids).logits, biased(x)
        assert not any("forward" in vars(m) for m in linears)
        after = model(ids).logits, biased(x)
    for ours, theirs, again in zip(packed, expected, after):
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, **tolerance)
        assert torch.equal(again, theirs)
