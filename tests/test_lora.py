"""--lora R (algorithms/lora.py): what adapters change, what they leave alone, and what the run saves."""
import json

import pytest
import torch
import transformers

import minireason as M
from algorithms import lora, memory, models

SMALL_MODEL = dict(M.TINY_MODEL, hidden_size=64, intermediate_size=256, num_hidden_layers=2)
SMALL_RUN = ["--n-train", "48", "--n-test", "16", "--sft-steps", "0", "--prompts-per-step", "8", "--group-size", "4",
             "--max-new-tokens", "24", "--eval-every", "100", "--no-sft-baseline", "--lr", "1e-2"]


@pytest.fixture
def small(tmp_path):
    """A freshly initialised small char-level LLaMA and its tokenizer, with its folder."""
    models.build_tiny_model(tmp_path / "small", SMALL_MODEL)
    return (*M.load_model(str(tmp_path / "small"), tmp_path, "cpu"), tmp_path / "small")


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def train_on_chains(model, tokenizer, steps=2):
    """A few AdamW steps on the NLL of some reference chains; returns the optimizer."""
    problems = M.load_task(M.parse_args(["--n-train", "8", "--n-test", "1"]))[0]
    batch = M.reference_batch(tokenizer, problems, "")
    batch = batch.select(torch.arange(8), n_tokens=batch.response_mask.sum(), n_rows=8)
    optimizer = M.make_optimizer([model], 1e-2)
    for _ in range(steps):
        (-M.response_logprobs(model, batch, 1.0)[0].sum() / batch.n_tokens).backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


IDS = torch.tensor([[3, 20, 30, 40, 50, 60, 70, 80]])


def test_zero_initialised_adapters_leave_the_outputs_unchanged(small):
    model, _, _ = small
    before = logits(model, IDS)
    lora.add_adapters(model, 4)
    assert torch.equal(logits(model, IDS), before)  # B = 0: W' = W, exactly (random B would change them)
    wrapped = sorted({name.rsplit(".", 1)[-1] for name, _ in lora.adapters(model)})
    assert wrapped == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert len(lora.adapters(model)) == 7 * 2  # every projection of both layers, not the LM head


def test_a_training_step_changes_only_the_adapters(small):
    model, tokenizer, _ = small
    lora.add_adapters(model, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = train_on_chains(model, tokenizer)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.endswith(("lora_A", "lora_B"))}  # all the adapters, nothing else
    # the optimizer holds the adapters alone: rank 4 · (in + out) of q, k, v, o (64 + 64 each), gate, up and down
    # (64 + 256 each) = 4 · 1472 = 5888 per layer, 11776 for the two
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == 11776
    assert memory.lora_parameter_count(memory.Shape.from_config(model.config), 4) == 11776


def test_adapters_off_is_the_model_without_them(small):
    model, tokenizer, _ = small
    base = logits(model, IDS)
    lora.add_adapters(model, 4)
    train_on_chains(model, tokenizer)
    adapted = logits(model, IDS)
    assert not torch.allclose(adapted, base, atol=1e-3)
    with lora.adapters_off(model):
        assert torch.equal(logits(model, IDS), base)
    assert torch.equal(logits(model, IDS), adapted)  # and on again afterwards


def test_the_merged_save_loads_as_a_plain_model_with_the_adapted_logits(small, tmp_path):
    model, tokenizer, _ = small
    lora.add_adapters(model, 4)
    train_on_chains(model, tokenizer)
    models.save_atomically(tmp_path / "merged", model, tokenizer, state_dict=lora.plain_state_dict(model, merge=True))
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # no missing or unused weights
    # W + (α/R)·B·A: leaving out α/R = 32/4 = 8, or writing W alone, is far off
    torch.testing.assert_close(logits(plain, IDS), logits(model, IDS), atol=1e-5, rtol=1e-5)


@pytest.fixture
def run(tmp_path, monkeypatch):
    """run(name, *flags) trains the small model with the small settings and returns the run folder. The reward is
    for a 7 in the response, which the untrained model earns now and then: groups differ, advantages are not 0."""
    monkeypatch.setattr(M, "TINY_MODEL", SMALL_MODEL)
    monkeypatch.setattr(M, "grade_batch", lambda texts, references, stopped: ["7" in t for t in texts])

    def train(name, *flags):
        M.train(M.parse_args(SMALL_RUN + ["--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / name),
                                          *flags]))
        return tmp_path / name
    return train


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_lora_run_loads_no_reference_copy_and_saves_a_merged_model(run, monkeypatch):
    loads = []
    load = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *args, **kwargs: loads.append(args[0]) or load(*args, **kwargs))
    run_dir = run("lora", "--lora", "4", "--steps", "2", "--save-every", "2")
    assert len(loads) == 1  # the policy; without --lora the reference is a second copy
    kl = [m["train/kl"] for m in read_metrics(run_dir) if "train/kl" in m]
    assert kl[0] == 0 and kl[1] > 0  # the reference is the policy without adapters: equal until B moves
    # model/ is W + (α/R)·B·A as plain weights: it computes what the checkpoint's W plus its adapters compute
    merged = load(run_dir / "model")
    adapted = lora.add_adapters(load(run_dir / "checkpoint-2"), 4)
    adapted.load_state_dict(torch.load(run_dir / "checkpoint-2" / "trainer_state.pt", weights_only=False)["adapters"],
                            strict=False)
    torch.testing.assert_close(logits(merged, IDS), logits(adapted, IDS), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits(merged, IDS), logits(load(run_dir / "checkpoint-2"), IDS), atol=1e-3)


def test_a_resumed_lora_run_continues_exactly(run):
    # the adapters travel in the checkpoint's trainer state; fresh ones (B = 0) would make step 2 another step
    straight = run("straight", "--lora", "4", "--steps", "2", "--save-every", "1")
    resumed = run("resumed", "--lora", "4", "--steps", "1", "--save-every", "1")
    M.train(M.parse_args(["--resume", str(resumed), "--steps", "2"]))
    # (the resumed run also evaluated after step 1, its last step then: greedy, which draws no random numbers)
    steps = [[{k: v for k, v in m.items() if k.startswith("train/")} for m in read_metrics(folder) if m["step"]]
             for folder in (straight, resumed)]
    assert len(steps[0]) == 2 and steps[0] == steps[1]
    weights = [transformers.AutoModelForCausalLM.from_pretrained(folder / "model").state_dict()
               for folder in (straight, resumed)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
