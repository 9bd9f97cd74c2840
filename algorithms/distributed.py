"""Data parallelism over N processes started by torchrun (not an algorithm): every place the processes (ranks)
communicate is one of the functions below, and minireason.py only calls them. Without torchrun each returns what
one process has, so a plain `python minireason.py` computes exactly what it did before.

    torchrun --nproc_per_node N minireason.py --algo grpo ...     (N GPUs with NCCL, or N CPU processes with gloo)

What is split: each RL step's prompts (rank r samples and grades all G responses of its share, so a group's
statistics need nobody else) and the held-out questions. What is communicated:
  - per mini-batch, its token and row counts (summed), so every rank divides its loss by the whole mini-batch's
    counts, and the gradients (summed, once per optimizer step): together one process's update over the whole batch;
  - per update, the shuffled order of the groups (rank 0's) and the loss statistics (summed);
  - per step, how many rows were kept (RAFT, DPO: whether to update at all), PPO's advantage mean and variance
    (whitened over the whole batch), the rollout's rows for the logs, and the evaluation's records (gathered);
  - at a checkpoint, every rank's random state; in the SFT baseline, rank 0's decision that the time is up.
Every rank keeps a full copy of the model and the optimizer and applies the same update to it. Only rank 0 writes
files and prints; the ranks sample with different random streams (seed_of_rank).

Gradients: one explicit all-reduce per optimizer step (sum_gradients), not torch's DistributedDataParallel. DDP
prepares its gradient hooks in its own forward(), and the update calls the model's parts (model.base_model and the
LM head's weight, minireason.token_logprobs), never model.forward; DDP would also need every rank to run as many
micro-batches as the others, while here a rank may hold none of a mini-batch's groups (RAFT keeps only the right
samples). What DDP adds, overlapping communication with the backward pass in buckets, matters little at these sizes.
"""
import atexit
import contextlib
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F


def init(device, reference_device):
    """Join the other processes if torchrun started this one (it sets RANK, WORLD_SIZE, LOCAL_RANK and where to
    meet): NCCL between GPUs, gloo on CPU. Returns (device, reference_device), where under torchrun a CUDA device
    is this process's own GPU, cuda:LOCAL_RANK. Without torchrun: the two as given, and nothing else happens."""
    if "RANK" not in os.environ:
        return device, reference_device
    if torch.device(device).type != "cuda":
        dist.init_process_group("gloo")
    else:
        local_rank, gpus = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
        if local_rank >= gpus:
            raise SystemExit(f"--device {device}: torchrun started more processes on this machine than its {gpus} "
                             f"GPUs; pass --nproc_per_node {gpus} (or --device cpu)")
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    atexit.register(leave)  # torch asks for it before the process exits

    def own_gpu(name):
        return f"cuda:{os.environ['LOCAL_RANK']}" if name and torch.device(name).type == "cuda" else name
    return own_gpu(device), own_gpu(reference_device)


def leave(finished=False):
    """Tear down the process group (at exit). After a run that finished, first wait until every rank has: gloo
    aborts a process whose peer tears its connections down under it ("terminate called without an active
    exception"). After an error, no waiting: the peers may never arrive, and torchrun stops them."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main():
    """Whether this process is rank 0: the one that writes files and prints."""
    return rank() == 0


def seed_of_rank(seed):
    """The torch seed of this rank's random stream: `seed` on rank 0 (so one process draws what it always did),
    seed + rank · 2^32 on the others, distinct for every seed below 2^32, and the same on every run."""
    return seed + (rank() << 32)


def share(items):
    """This rank's contiguous share of a list: rank r of N takes items[r·n/N : (r+1)·n/N], so the shares in rank
    order are the list itself (groups stay whole when the items are prompts)."""
    n, r, N = len(items), rank(), world_size()
    return items[r * n // N:(r + 1) * n // N]


def collective_device():
    """Where collectives take their tensors: the GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def total(value):
    """The sum of `value` (a number, or a tensor, which keeps its dtype and device) over all ranks."""
    if not dist.is_initialized():
        return value
    summed = torch.as_tensor(value).to(collective_device(), copy=True)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed.to(value.device) if isinstance(value, torch.Tensor) else summed.item()


def masked_mean(x, mask):
    """Mean of x where mask is 1, over all ranks' rows: Σ_ranks Σ x·mask / Σ_ranks Σ mask (0 if the mask is
    empty). In one process it is common.masked_mean(x, mask)."""
    return total((x * mask).sum()) / total(mask.sum()).clamp(min=1)


def gathered(value):
    """Every rank's `value` (any picklable object), as a list in rank order; [value] in one process."""
    if not dist.is_initialized():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def concatenated(items):
    """All ranks' lists joined in rank order: the inverse of share()."""
    return [item for part in gathered(items) for item in part]


def summed(stats):
    """A dict of numbers summed key by key over all ranks (a rank that computed none of a key adds nothing)."""
    result = {}
    for part in gathered(stats):
        for key, value in part.items():
            result[key] = result.get(key, 0.0) + value
    return result


def from_rank0(value):
    """Rank 0's `value` on every rank: for decisions that must be the same everywhere (stop at a wall time)."""
    if not dist.is_initialized():
        return value
    values = [value]
    dist.broadcast_object_list(values, src=0)
    return values[0]


def own(per_rank, what):
    """This rank's entry of a list saved with one entry per rank (gathered()), or one line saying why there is none."""
    if len(per_rank) != world_size():
        raise SystemExit(f"{what} was saved by {len(per_rank)} processes, not {world_size()}: resume it with torchrun "
                         f"--nproc_per_node {len(per_rank)}" if len(per_rank) > 1 else
                         f"{what} was saved by one process, not {world_size()}: resume it without torchrun")
    return per_rank[rank()]


def rank0_first(build):
    """build() on rank 0 first, then on the others: what rank 0 builds into the cache (the tiny model, the
    warm-up), the others find there. Returns build()'s result."""
    if not dist.is_initialized():
        return build()
    result = build() if is_main() else None
    dist.barrier()
    return result if is_main() else build()


@contextlib.contextmanager
def rank0_prints():
    """Inside, ranks other than 0 print nothing: stdout and stderr (so also progress bars) go to os.devnull. An
    error still reaches the terminal: Python prints it after the exception has left this context."""
    if is_main():
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


def minibatches(n_groups, n_minibatches):
    """This rank's groups in each shuffled mini-batch: a list of (g,) local group indices, possibly empty.

    One process: torch.randperm(n_groups).chunk(n_minibatches). N processes: the same over all ranks' groups laid
    end to end in rank order, the permutation drawn on rank 0 and sent to the others, so that every rank cuts the
    same mini-batches as one process holding the whole batch would; each keeps the groups it holds.
    """
    if not dist.is_initialized():
        return torch.randperm(n_groups).chunk(n_minibatches)
    counts = gathered(n_groups)
    first = sum(counts[:rank()])  # this rank's first group in the whole batch
    order = torch.randperm(sum(counts)) if is_main() else torch.empty(sum(counts), dtype=torch.long)
    order = order.to(collective_device())
    dist.broadcast(order, src=0)
    return [chunk[(chunk >= first) & (chunk < first + n_groups)] - first for chunk in order.cpu().chunk(n_minibatches)]


def sum_gradients(parameters):
    """Add the parameters' gradients up over all ranks, in place: once per optimizer step, after the last
    micro-batch. Each rank's loss is already divided by the whole mini-batch's token (or row) count, so the sum,
    not the mean, is the gradient of one process over the whole mini-batch. A rank that held none of the
    mini-batch's groups adds zeros."""
    if not dist.is_initialized():
        return
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def gather_rows(rollout):
    """All ranks' rows of a rollout (rank 0's first), as one process would hold the whole batch: for the logs.
    Tensors are padded to the widest rank's columns with 0, prompt fields on the left as Rollout keeps them."""
    if rollout is None or not dist.is_initialized():
        return rollout
    fields = {k: v for k, v in vars(rollout).items() if isinstance(v, torch.Tensor)}
    parts = gathered({k: v.cpu() for k, v in fields.items()})

    def joined(name):
        tensors = [part[name] for part in parts]
        width = max(t.size(-1) for t in tensors)
        pad = (lambda t: (width - t.size(-1), 0)) if name.startswith("prompt") else (lambda t: (0, width - t.size(-1)))
        return torch.cat([F.pad(t, pad(t)) if t.dim() == 2 else t for t in tensors]).to(fields[name].device)
    return type(rollout)(**vars(rollout) | {name: joined(name) for name in fields})
