"""--fsdp with two gloo processes on the CPU: the model sharded with FSDP2 (algorithms/distributed.py). Two ranks, each
holding part of a batch and 1/2 of every weight, make the update one process makes holding all of it; a two-process
--fsdp run logs what one process logs and saves a model/ that from_pretrained loads."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers

import minireason as M
from algorithms import distributed, grpo, models, ppo, raft
from test_distributed import CFG, SMALL_MODEL, case_batch, largest_change, make_batch, run_two_ranks, update

ROOT = Path(__file__).resolve().parents[1]
# name: (algorithm, settings, the whole batch's rows the update trains on, rank 0's, rank 1's). The batch is
# test_distributed's 8 groups of 2, long responses first. Rank 0 holds 6 groups (rows 0-11), rank 1 the last 2
# (short ones); each of the two mini-batches of 4 groups that rank 0 draws (groups 4 0 7 3, then 2 5 1 6) has 3 of
# rank 0's and 1 of rank 1's, so with micro-batches of 1 group rank 1 pads 2 micro-batches in each.
CASES = {
    "token-mean, micro-batches of 1 group": (grpo, dict(loss_agg="token-mean", micro_batch=2), range(16), range(12),
                                             range(12, 16)),
    "seq-mean-token-mean, micro-batches of 3 groups": (grpo, dict(loss_agg="seq-mean-token-mean", micro_batch=6),
                                                       range(16), range(8), range(8, 16)),
    # the gradient's norm (about 0.8) clipped to 0.05: the norm must be the whole gradient's, over both ranks' shards
    "token-mean, clipped": (grpo, dict(loss_agg="token-mean", micro_batch=2, grad_clip=0.05), range(16), range(12),
                            range(12, 16)),
    # RAFT trains on the right samples only; here rank 1 holds none of them and pads every micro-batch
    "raft, rank 1 holds no row": (raft, dict(loss_agg="token-mean", micro_batch=4), range(0, 8, 2), range(0, 8, 2),
                                  []),
}


# PPO: GAE's advantages and a value head on the policy's last hidden state, which is not sharded (its gradient is
# summed over the ranks by distributed.sum_gradients, the model's by FSDP); no KL term, no clipping
PPO = dict(gamma=1.0, lam=0.95, value_clip=0.2, value_coef=0.5, loss_agg="token-mean", micro_batch=2)


def update_with_value_head(model_dir, rows, shard):
    """PPO's update with SGD on `rows` of the batch from the model in model_dir and a value head: (the model's
    parameters after it, gathered onto rank 0 if shard, the value head's)."""
    model, tokenizer = M.load_model(str(model_dir), model_dir, "cpu")
    torch.manual_seed(1)  # the value head's random start, the same in every process
    value_head = torch.nn.Linear(model.config.hidden_size, 1)
    if shard:
        distributed.shard(model)
    optimizer = torch.optim.SGD([{"params": model.parameters()}, {"params": value_head.parameters()}], lr=0.5)
    batch, settings = make_batch(tokenizer), SimpleNamespace(**vars(CFG) | PPO)
    old_logprobs, _, old_values = M.score(model, batch, 1.0, 64, value_head, with_entropy=False)
    batch = M.Rollout(**vars(batch) | {"old_logprobs": old_logprobs, "old_values": old_values})
    batch = M.Rollout(**vars(batch) | {"advantages": ppo.advantages(batch, settings),
                                       "returns": ppo.value_targets(batch, settings)}).select(rows)
    torch.manual_seed(0)
    M.update(model, optimizer, batch, ppo, settings, value_head)
    weights = distributed.full_state_dict(model) if shard else \
        {name: p.detach().clone() for name, p in model.named_parameters()}
    return weights, value_head.state_dict()


def rank_main(rank, folder):
    """One of two processes: each case's update on this rank's rows; rank 0 saves the gathered parameters."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank,
                                         world_size=2)
    for i, name in enumerate(CASES):
        algo, settings, batch = case_batch(folder / "model", name, CASES)
        mine = torch.tensor(CASES[name][3 + rank], dtype=torch.long)
        # the whole batch scored (its weights gathered whole, as rl_step does), this rank's rows updated
        parameters = update(folder / "model", batch, algo, settings, rows=mine, shard=True)
        if rank == 0:
            torch.save(parameters, folder / f"case{i}.pt")
    ppo_parameters = update_with_value_head(folder / "model", torch.arange(12) if rank == 0 else torch.arange(12, 16),
                                            shard=True)
    torch.save(ppo_parameters, folder / f"ppo-rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_sharded_ranks(tmp_path_factory):
    """The folder where two gloo processes left the parameters of each case (the model they started from in
    folder/model)."""
    return run_two_ranks(tmp_path_factory.mktemp("two-sharded-ranks"), rank_main)


@pytest.mark.parametrize("i, name", list(enumerate(CASES)))
def test_two_sharded_ranks_make_one_process_update(two_sharded_ranks, i, name):
    # Two optimizer steps with SGD, each rank's loss divided by the whole mini-batch's tokens (or rows), the
    # gradients of the shards summed (not averaged, FSDP's default: that halves the step), the LM head's gradient
    # (the embeddings' too: they are tied) included though the update reads its weight outside any forward
    algo, settings, batch = case_batch(two_sharded_ranks / "model", name, CASES)
    one_process = update(two_sharded_ranks / "model", batch, algo, settings, rows=torch.tensor(CASES[name][2]))
    assert largest_change(two_sharded_ranks / "model", one_process) > 1e-3  # the update moved
    gathered = torch.load(two_sharded_ranks / f"case{i}.pt")
    assert sorted(gathered) == sorted(one_process)
    for key, value in one_process.items():
        torch.testing.assert_close(gathered[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_two_sharded_ranks_make_one_process_ppo_update(two_sharded_ranks):
    # The value head's gradient summed by sum_gradients, the model's by FSDP, the two groups of AdamW's parameters
    # (here SGD's) stepped apart, and the gradient norm taken over both (about 2.5; CFG does not clip)
    one_weights, one_head = update_with_value_head(two_sharded_ranks / "model", torch.arange(16), shard=False)
    assert largest_change(two_sharded_ranks / "model", one_weights) > 1e-3  # the update moved
    weights, head = torch.load(two_sharded_ranks / "ppo-rank0.pt")
    for key, value in one_weights.items():
        torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6, msg=key)
    for rank in range(2):  # the value head is whole on every rank
        head = torch.load(two_sharded_ranks / f"ppo-rank{rank}.pt")[1]
        for key, value in one_head.items():
            torch.testing.assert_close(head[key], value, rtol=1e-5, atol=1e-6, msg=f"rank {rank}: value head {key}")


FLAGS = ["--sft-steps", "0", "--n-train", "24", "--n-test", "10", "--prompts-per-step", "5", "--group-size", "4",
         "--max-new-tokens", "12", "--micro-batch", "4", "--eval-batch", "64", "--lr", "1e-3", "--no-sft-baseline",
         "--eval-every", "1", "--threads", "1", "--device", "cpu", "--dtype", "fp32"]


def torchrun(*flags):
    """minireason.py with `flags` in two processes (torchrun), on the CPU."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(ROOT / "minireason.py"), *map(str, flags)], capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def greedy(samples_file):
    return [json.loads(line)["greedy"]["response"] for line in samples_file.read_text().splitlines()]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """The folder of a small model (folder/model) and of a two-process --fsdp run of 2 steps from it (folder/run)."""
    folder = tmp_path_factory.mktemp("fsdp-run")
    models.build_tiny_model(folder / "model", SMALL_MODEL)
    torchrun("--model", folder / "model", *FLAGS, "--steps", "2", "--fsdp", "--out", folder / "run")
    return folder


def test_a_two_process_fsdp_run_logs_what_one_process_logs_and_saves_a_plain_model(fsdp_run, tmp_path):
    flags = ["--model", str(fsdp_run / "model"), *FLAGS]
    M.train(M.parse_args([*flags, "--steps", "2", "--out", str(tmp_path / "one")]))  # one process: this one
    assert [sorted(m) for m in metrics(fsdp_run / "run")] == [sorted(m) for m in metrics(tmp_path / "one")]
    # model/ is a plain HF folder holding the trained weights: from_pretrained loads them, they moved from the start,
    # and in one process they answer the held-out questions as the sharded model did at its last evaluation
    trained = transformers.AutoModelForCausalLM.from_pretrained(fsdp_run / "run" / "model")
    start = transformers.AutoModelForCausalLM.from_pretrained(fsdp_run / "model")
    assert type(trained) is transformers.LlamaForCausalLM
    assert max((a - b).abs().max() for a, b in zip(trained.parameters(), start.parameters(), strict=True)) > 1e-4
    M.evaluate_only(M.parse_args(["--eval-only", *flags, "--model", str(fsdp_run / "run" / "model"),
                                  "--out", str(tmp_path / "eval")]))
    assert greedy(tmp_path / "eval" / "samples" / "step-0.jsonl") == greedy(fsdp_run / "run" / "samples" /
                                                                          "step-2.jsonl")


def test_a_resumed_fsdp_run_continues_as_if_never_stopped(fsdp_run, tmp_path):
    # 1 step and a checkpoint (the weights and AdamW's moments gathered whole onto rank 0), then --resume to step 2:
    # the same metrics as the 2 steps run at once, so the optimizer state was sharded back as it was
    torchrun("--model", fsdp_run / "model", *FLAGS, "--steps", "1", "--save-every", "1", "--fsdp",
             "--out", tmp_path / "run")
    torchrun("--resume", tmp_path / "run", "--steps", "2")
    for resumed, at_once in zip(metrics(tmp_path / "run"), metrics(fsdp_run / "run"), strict=True):
        assert {k: v for k, v in resumed.items() if k != "time/rl_seconds"} == \
            {k: v for k, v in at_once.items() if k != "time/rl_seconds"}


def test_fsdp_without_torchrun_is_refused_in_one_line():
    with pytest.raises(SystemExit) as stop:
        M.main(["--fsdp", "--steps", "1"])
    assert str(stop.value) == ("--fsdp shards the model over the processes torchrun starts: run it as torchrun "
                               "--nproc_per_node N minireason.py --fsdp ...")
