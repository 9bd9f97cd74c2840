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

--fsdp: the same split of the batch, but each rank keeps only 1/N of every weight, gradient and AdamW moment, with
PyTorch's FSDP2 (torch.distributed.fsdp.fully_shard), for a model whose weights and optimizer state do not fit on one
GPU. What is sharded and communicated besides the above (the functions from shard() on):
  - the weights, in units: each decoder layer one, the rest (the embeddings, tied to the LM head, and the final norm)
    the root. A unit's weights are gathered whole (all-gather) just before its forward and again for its backward,
    and dropped after; the root's stay whole from its forward to the end of the backward, as the update reads the
    LM head's weight after the forward (minireason.token_logprobs);
  - the gradients: summed over the ranks and each rank keeps its 1/N (reduce-scatter), on the last micro-batch of
    each optimizer step; AdamW then updates each rank's 1/N of the weights;
  - while sampling, scoring and evaluating: every weight gathered whole once, kept for the whole phase (whole()).
Since every forward and backward of the update all-gathers, every rank must run as many micro-batches as the
busiest one: a rank that has run out runs padding rows that train nothing (micro_batches, padded).
"""
import atexit
import contextlib
import os
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor


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


def refuse_unsupported(cfg):
    """Stop, with one line naming the flag, a run that torchrun or --fsdp cannot do."""
    if world_size() > 1 and (cfg.compare or cfg.prompts_per_step < world_size()):
        raise SystemExit("--compare starts its own processes: run it without torchrun" if cfg.compare else
                         f"--prompts-per-step {cfg.prompts_per_step}: fewer than the {world_size()} processes")
    if not cfg.fsdp:
        return
    if not dist.is_initialized():
        raise SystemExit("--fsdp shards the model over the processes torchrun starts: run it as torchrun "
                         "--nproc_per_node N minireason.py --fsdp ...")
    if cfg.lora:
        raise SystemExit("--lora with --fsdp: the adapters are not sharded; use one or the other")
    if cfg.eval_only:
        raise SystemExit("--eval-only with --fsdp: evaluation holds the whole model on each process; drop --fsdp")
    if cfg.sft_baseline:
        raise SystemExit("--sft-baseline with --fsdp: the baseline trains a whole copy of the model on each process; "
                         "pass --no-sft-baseline")
    if cfg.reference_device not in (None, cfg.device):
        raise SystemExit(f"--reference-device {cfg.reference_device} with --fsdp: the reference model is sharded like "
                         "the policy; drop it")


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
    mini-batch's groups adds zeros. Under --fsdp only the parameters that are not sharded (PPO's value head)."""
    if not dist.is_initialized():
        return
    for p in (p for p in parameters if not isinstance(p, DTensor)):  # --fsdp: FSDP summed the sharded ones
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


# ----------------------------------------------------------------------------------------------------
# --fsdp: FSDP2 sharding (see the module docstring)


def shard(*models):
    """Shard each model (None: skipped) over the ranks with FSDP2, in place: fully_shard on each decoder layer, then on
    the model, whose own unit (the root) holds the rest: the embeddings, with the LM head when tied, and the final norm.
    Each rank keeps dim-0 slices (DTensors) of 1/N of every weight; an optimizer built afterwards keeps AdamW's moments
    of those slices only. The root is not resharded after its forward (see the module docstring). Gradients are summed
    over the ranks, not averaged (FSDP's default): each rank's loss is already divided by the whole mini-batch's
    counts, as in sum_gradients; as a plain sum, which gloo can do (a divide factor of 1 is otherwise a PREMUL_SUM).
    Every parameter is reduce-scattered, even one that got no gradient, so the ranks' collectives always match."""
    # FSDP warns that the root's output holds a view: its own wrapper of layer 0's input, which output_hidden_states
    # returns as hidden_states[0] (minireason.response_hidden). Nothing writes into it.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for model in (m for m in models if m is not None):
        for layer in model.base_model.layers:
            fully_shard(layer, reshard_after_forward=True)
        fully_shard(model, reshard_after_forward=False)
        for unit in units(model):
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
            unit.set_reduce_scatter_unused_params(True, recurse=False)


def units(model):
    """The FSDP units of a sharded model, the root (the model itself) first; [] for a model that is not sharded."""
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def sharded(model):
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def whole(model):
    """Inside, every rank holds all of a sharded model's weights: each unit all-gathered once on entry and none after
    a forward, so that forwards need no communication and ranks may run different numbers of them (rows finish
    sampling at different steps; ranks hold different numbers of rows to score). Sharded again on exit. Enter it
    outside torch.inference_mode: FSDP gathers into the same buffers in the update, and buffers first filled in
    inference mode become inference tensors, which the update then cannot fill ("Inplace update to inference tensor
    outside InferenceMode"). Nothing happens to a model that is not sharded."""
    if not sharded(model):
        yield model
        return
    for unit in units(model):
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units(model):
            unit.reshard()
            unit.set_reshard_after_forward(unit is not model, recurse=False)  # the root stays whole after a forward


def micro_batches(model, minibatch, groups_per_micro):
    """This rank's groups of a mini-batch (g,) in micro-batches of groups_per_micro groups, a list of index tensors.
    A sharded model: as many as the busiest rank has, the missing ones empty (see padded), since every forward and
    backward all-gathers."""
    mine = list(minibatch.split(groups_per_micro)) if len(minibatch) else []
    if not sharded(model):
        return mine
    busiest = torch.tensor(len(mine), device=collective_device())
    dist.all_reduce(busiest, op=dist.ReduceOp.MAX)
    return mine + [minibatch[:0]] * (int(busiest) - len(mine))


def padded(micro, group_size):
    """A micro-batch (a Rollout), or for an empty one (a rank that ran out, see micro_batches) group_size padding rows:
    one prompt token and one response token each, the response masked out and every per-row number 0, so their loss
    and gradients are 0 while their forward and backward take part in the all-gathers. (A forward over no rows at
    all fails in the model.) The normalisers n_tokens and n_rows stay the mini-batch's."""
    if len(micro.response_mask):
        return micro
    per_row = {k: v for k, v in vars(micro).items() if isinstance(v, torch.Tensor) and v.dim()}  # not n_tokens
    return type(micro)(**vars(micro) | {k: (v.new_ones if k == "prompt_mask" else v.new_zeros)(
        (group_size, 1) if v.dim() == 2 else (group_size,)) for k, v in per_row.items()})


def sync_gradients(model, last):
    """A sharded model: reduce-scatter the gradients in this backward only if it is the last micro-batch of the
    optimizer step; before it, each rank accumulates its own whole-sized gradients (FSDP's no_sync)."""
    if sharded(model):
        model.set_requires_gradient_sync(last)


def clip_grad_norm_(parameters, max_norm):
    """torch.nn.utils.clip_grad_norm_: scale the gradients by min(1, max_norm / (norm + 1e-6)), return the norm. Where
    some gradients are sharded (--fsdp; PPO's value head is not), the norm is the whole gradient's over all ranks,
    sqrt(Σ_ranks ‖this rank's slices‖² + ‖the unsharded gradients‖²), so every rank scales by the same factor."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not any(isinstance(g, DTensor) for g in grads):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    slices = sum(g.to_local().double().square().sum() for g in grads if isinstance(g, DTensor))
    unsharded = sum(g.double().square().sum() for g in grads if not isinstance(g, DTensor))  # the same everywhere
    norm = float(total(slices) + unsharded) ** 0.5
    for g in grads:
        g.mul_(min(1.0, max_norm / (norm + 1e-6)))
    return norm


def full_state_dict(model):
    """The model's state dict with whole tensors, for saving: a sharded model's gathered onto rank 0's CPU, {} on the
    other ranks (every rank must call it: the gathering is collective). A tied weight (the LM head, the embeddings)
    comes once, under its first name, as model.state_dict() gives it to save_pretrained."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    names = dict(model.named_parameters()) | dict(model.named_buffers())  # each tensor once
    return {k: v for k, v in state.items() if k in names}


def optimizer_state_dict(optimizer, modules):
    """optimizer.state_dict() of an optimizer over the modules' parameters (a None module: none). If the first, the
    model, is sharded: AdamW's moments gathered whole onto rank 0, {} on the others (collective, like
    full_state_dict), keyed by parameter name, so that another run can shard them again."""
    if not sharded(modules[0]):
        return optimizer.state_dict()
    return get_optimizer_state_dict(torch.nn.ModuleList([m for m in modules if m is not None]), optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state_dict(optimizer, modules, state):
    """optimizer.load_state_dict(state); with a sharded model, each rank takes its 1/N of the whole moments saved by
    optimizer_state_dict."""
    if not sharded(modules[0]):
        return optimizer.load_state_dict(state)
    set_optimizer_state_dict(torch.nn.ModuleList([m for m in modules if m is not None]), optimizer, state,
                             options=StateDictOptions(full_state_dict=True))
