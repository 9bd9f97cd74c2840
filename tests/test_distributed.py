"""torchrun data parallelism (algorithms/distributed.py) with two gloo processes on the CPU: two ranks, each
holding half of a batch's groups, make the same update as one process holding all of it; and a two-process run of
the command line logs what a one-process run logs."""
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import minireason as M
from algorithms import distributed, grpo, models, raft

ROOT = Path(__file__).resolve().parents[1]
SMALL_MODEL = dict(M.TINY_MODEL, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
# a GRPO setting where the update is linear in the gradient: SGD (AdamW would hide a gradient twice too large, as it
# divides by the gradient's own scale) and no clipping (clipping would hide it too)
CFG = SimpleNamespace(clip_low=0.2, clip_high=0.2, dual_clip=None, kl_coef=0.0, std_normalize=True, temperature=1.0,
                      epochs=1, minibatches=2, grad_clip=1e9, max_new_tokens=64)
# response lengths: the first half of the groups (rank 0's) long, the second half (rank 1's) short, so each rank's own
# token count is far from half of the whole batch's (42 + 10 + ... tokens against 12 + 3 + ...)
LENGTHS = [9, 13, 11, 12, 10, 14, 12, 8, 2, 4, 3, 1, 2, 5, 1, 3]
G = 2


def make_batch(tokenizer):
    """8 groups of 2 responses of LENGTHS tokens, one right and one wrong per group, with GRPO's advantages."""
    generator = torch.Generator().manual_seed(0)
    questions = [f"{a}+{b}" for a, b in zip(range(8), range(3, 11))]
    prompts = [M.encode_prompt(tokenizer, q, "") for q in questions for _ in range(G)]
    prompt_ids, prompt_mask = M.pad(prompts, tokenizer.pad_token_id, left=True)
    responses = [torch.randint(3, 90, (n,), generator=generator).tolist() for n in LENGTHS]
    response_ids, response_mask = M.pad(responses, tokenizer.pad_token_id)
    rewards = torch.tensor([1.0, 0.0] * 8)
    return M.Rollout(prompt_ids, prompt_mask, response_ids, response_mask.float(), G, rewards=rewards)


def update(model_dir, batch, algo, settings, rows=None, shard=False):
    """Parameters after M.update with SGD on `rows` of the batch (all by default), from the model in model_dir.
    shard: the model sharded (--fsdp) before the optimizer is built, and the parameters gathered whole onto rank 0
    ({} on the others)."""
    model, _ = M.load_model(str(model_dir), model_dir, "cpu")
    if shard:
        distributed.shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    old_logprobs = M.score(model, batch, 1.0, micro_batch=64, with_entropy=False)[0]
    batch = M.Rollout(**vars(batch) | {"old_logprobs": old_logprobs})
    batch = M.Rollout(**vars(batch) | {"advantages": algo.advantages(batch, settings)})
    if rows is not None:
        batch = batch.select(rows)
    torch.manual_seed(0)  # rank 0's draw of the mini-batches is the one process's draw
    M.update(model, optimizer, batch, algo, settings)
    return distributed.full_state_dict(model) if shard else {name: p.detach().clone() for name, p in
                                                               model.named_parameters()}


def largest_change(model_dir, parameters):
    """How far an update moved `parameters` from the model in model_dir: the largest change of any entry."""
    start = dict(M.load_model(str(model_dir), model_dir, "cpu")[0].named_parameters())
    return max((value - start[key]).abs().max() for key, value in parameters.items())


CASES = {  # name: (algorithm, settings, the whole batch's rows the update trains on, rank 0's, rank 1's)
    "token-mean, micro-batches of 1 group": (grpo, dict(loss_agg="token-mean", micro_batch=2), range(16), range(8),
                                             range(8, 16)),
    "seq-mean-token-mean, micro-batches of 3 groups": (grpo, dict(loss_agg="seq-mean-token-mean", micro_batch=6),
                                                       range(16), range(8), range(8, 16)),
    # RAFT trains on the right samples only; here rank 1 holds none of them, so it adds zeros to the gradient
    "raft, rank 1 holds no row": (raft, dict(loss_agg="token-mean", micro_batch=4), range(0, 8, 2), range(0, 8, 2),
                                  []),
}


def case_batch(model_dir, name, cases=CASES):
    """(algorithm, settings, the whole batch) of the case `name` of `cases`; its settings change CFG's."""
    algo, changes, *_ = cases[name]
    _, tokenizer = M.load_model(str(model_dir), model_dir, "cpu")
    batch = make_batch(tokenizer)
    if algo is raft:  # kept rows as groups of one, as rl_step hands them to the update
        batch = M.Rollout(**vars(batch) | {"group_size": 1})
    return algo, SimpleNamespace(**vars(CFG) | changes), batch


def rank_main(rank, folder):
    """One of two processes: each case's update on this rank's rows, the parameters saved for the test to compare."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank,
                                         world_size=2)
    x, mask = ([[1.0, 2.0, 3.0]], [[1.0, 1.0, 0.0]]) if rank == 0 else ([[4.0, 10.0]], [[1.0, 0.0]])
    torch.save(distributed.masked_mean(torch.tensor(x), torch.tensor(mask)), folder / f"mean-{rank}.pt")
    for i, name in enumerate(CASES):
        algo, settings, batch = case_batch(folder / "model", name)
        mine = torch.tensor(CASES[name][3 + rank], dtype=torch.long)
        # the batch the update gets: this rank's rows of the kept ones, as rl_step selects them
        torch.save(update(folder / "model", batch, algo, settings, rows=mine), folder / f"case{i}-rank{rank}.pt")
    torch.distributed.destroy_process_group()


def run_two_ranks(folder, main):
    """main(rank, folder) in two processes, from a model built in folder/model; returns the folder once both have
    exited cleanly."""
    models.build_tiny_model(folder / "model", SMALL_MODEL)
    context = multiprocessing.get_context("fork")  # the children start with minireason imported: seconds, not tens
    ranks = [context.Process(target=main, args=(rank, folder)) for rank in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=300)
    for process in ranks:  # one waiting for the other's collective forever (a mismatch) must not outlive the test
        if process.is_alive():
            process.kill()
    assert [process.exitcode for process in ranks] == [0, 0]
    return folder


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The folder where two gloo processes left their results (the model they started from in folder/model)."""
    return run_two_ranks(tmp_path_factory.mktemp("two-ranks"), rank_main)


def test_a_masked_mean_is_over_all_ranks_tokens(two_ranks):
    # rank 0: 1, 2 (3 masked out); rank 1: 4 (10 masked out): (1 + 2 + 4) / 3, not the mean of the ranks' means
    # ((1.5 + 4) / 2 = 2.75), as PPO whitens its advantages
    assert [torch.load(two_ranks / f"mean-{rank}.pt").item() for rank in range(2)] == [pytest.approx(7 / 3)] * 2


@pytest.mark.parametrize("i, name", list(enumerate(CASES)))
def test_two_ranks_make_one_process_update(two_ranks, i, name):
    # Two optimizer steps (two mini-batches of 4 groups, drawn by rank 0, each split over the ranks) with SGD:
    # each rank's loss divided by the whole mini-batch's tokens (or rows), the gradients summed. Dividing by a
    # rank's own tokens, or averaging the ranks' gradients, gives other parameters.
    algo, settings, batch = case_batch(two_ranks / "model", name)
    one_process = update(two_ranks / "model", batch, algo, settings, rows=torch.tensor(CASES[name][2]))
    assert largest_change(two_ranks / "model", one_process) > 1e-2  # the update moved
    for rank in range(2):
        ranks = torch.load(two_ranks / f"case{i}-rank{rank}.pt")
        for key, value in one_process.items():
            torch.testing.assert_close(ranks[key], value, rtol=1e-5, atol=1e-6, msg=f"rank {rank}: {key}")


def test_a_two_process_run_logs_what_one_process_logs(tmp_path):
    models.build_tiny_model(tmp_path / "model", SMALL_MODEL)
    flags = ["--model", tmp_path / "model", "--sft-steps", "0", "--n-train", "24", "--n-test", "10",
             "--prompts-per-step", "5", "--group-size", "4", "--max-new-tokens", "12", "--micro-batch", "64",
             "--eval-batch", "64", "--lr", "1e-3", "--steps", "2", "--sft-baseline", "--threads", "1",
             "--device", "cpu", "--dtype", "fp32"]
    environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")

    def metrics(out):
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    M.train(M.parse_args([*map(str, flags), "--out", str(tmp_path / "one")]))  # one process: this one
    one = metrics(tmp_path / "one")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(ROOT / "minireason.py"), *map(str, flags), "--out", str(tmp_path / "two")],
                            capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    two, printed = metrics(tmp_path / "two"), result.stdout
    assert [sorted(m) for m in two] == [sorted(m) for m in one]
    assert printed.count("held-out greedy accuracy") == 1  # rank 0 alone prints
    # the held-out questions were split between the ranks and their records put back together, in order
    samples = [json.loads(line) for line in (tmp_path / "two" / "samples" / "step-0.jsonl").read_text().splitlines()]
    one_samples = (tmp_path / "one" / "samples" / "step-0.jsonl").read_text().splitlines()
    assert [s["question"] for s in samples] == [json.loads(line)["question"] for line in one_samples]
    assert [s["greedy"] for s in samples] == [json.loads(line)["greedy"] for line in one_samples]  # the same model
