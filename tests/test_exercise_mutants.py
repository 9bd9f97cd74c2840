"""A test of the exercises' tests: plausible wrong implementations (mutants) that they must catch, the blank
stubs they must fail, and the student-copy tool. Teacher side only: it holds near-answers, so the student copy
leaves this file out.

    python tests/test_exercise_mutants.py table          # exercise x mutants caught, as a markdown table
    python tests/test_exercise_mutants.py sign-flipped [--seed N]   # end-to-end, GRPO's advantages negated

A mutant is the reference function with one plausible mistake, written as a text substitution on its source
(old -> new), compiled in its module's namespace and swapped in for every reference to the original in the
project's modules (pytest's monkeypatch undoes it). It is caught when at least one of its exercise's tests fails.
"""
import inspect
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import exercises  # noqa: E402
import test_exercises  # noqa: E402

# exercise -> [(mistake, function, old text, new text)]; old and new may be tuples of several substitutions
MUTANTS = {
    "masked_mean": [
        ("mask forgotten: the mean of every position", "masked_mean",
         "return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)",
         "return x.mean() if dim is None else x.mean(dim)"),
        ("divided by all positions, not the masked ones", "masked_mean", "mask.sum(dim).clamp(min=1)",
         "(mask.numel() if dim is None else mask.size(dim))"),
        ("no clamp: an empty mask gives NaN", "masked_mean", "mask.sum(dim).clamp(min=1)", "mask.sum(dim)"),
        ("masked_sum ignores dim", "masked_sum", "if dim is None else (x * mask).sum(dim)", "if True else None"),
    ],
    "aggregate_loss": [
        ("token-mean over this micro-batch's tokens, not the mini-batch's", "aggregate_loss",
         "masked_sum(token_loss, mask) / n_tokens", "masked_sum(token_loss, mask) / mask.sum()"),
        ("seq-mean over this micro-batch's rows, not the mini-batch's", "aggregate_loss",
         "masked_mean(token_loss, mask, dim=1).sum() / n_rows", "masked_mean(token_loss, mask, dim=1).mean()"),
        ("token-mean counts the padding", "aggregate_loss", "masked_sum(token_loss, mask) / n_tokens",
         "token_loss.sum() / n_tokens"),
        ("seq-mean divides each row by the longest response", "aggregate_loss",
         "masked_mean(token_loss, mask, dim=1).sum()", "(masked_sum(token_loss, mask, dim=1) / mask.size(1)).sum()"),
        ("an unknown mode falls back to token-mean", "aggregate_loss",
         'raise ValueError(f"unknown loss aggregation {mode!r}")', "return masked_sum(token_loss, mask) / n_tokens"),
    ],
    "group_advantages": [
        ("std without its epsilon (NaN on all-same groups)", "group_advantages",
         "r.std(dim=1, keepdim=True) + EPS", "r.std(dim=1, keepdim=True)"),
        ("population std (n, not n - 1)", "group_advantages", "r.std(dim=1, keepdim=True)",
         "r.std(dim=1, keepdim=True, correction=0)"),
        ("groups read down the columns", "group_advantages", "r = group_view(rewards.float(), group_size)",
         "r = rewards.float().view(group_size, -1).T"),
        ("baseline is the batch mean, not the group's", "group_advantages", "r - r.mean(dim=1, keepdim=True)",
         "r - r.mean()"),
        ("sign flipped", "group_advantages", "return adv.flatten()", "return -adv.flatten()"),
    ],
    "reinforce_rej_filter": [
        ("a partial reward makes a group not all wrong", "rejected",
         "all_correct, all_wrong = group_outcomes(rollout.rewards == 1, rollout.group_size)",
         ("all_correct, all_wrong = group_outcomes(rollout.rewards == 1, rollout.group_size)[0], "
          "group_outcomes(rollout.rewards > 0, rollout.group_size)[1]")),
        ("all-same forgets the all-correct groups", "rejected", '"all-same": all_correct | all_wrong',
         '"all-same": all_wrong'),
        ("a group's verdict tiled, not repeated, over its rows", "rejected",
         "per_row(groups[cfg.reject_groups], rollout.group_size)",
         "groups[cfg.reject_groups].repeat(rollout.group_size)"),
        ("drop keeps the rejected groups", "keep_rows", "keep = ~rejected(rollout, cfg)",
         "keep = rejected(rollout, cfg)"),
        ("kept rows reported as groups of one", "keep_rows", "return keep.nonzero().squeeze(-1), rollout.group_size",
         "return keep.nonzero().squeeze(-1), 1"),
    ],
    "raft_rows": [
        ("keeps any positive reward, partial ones too", "keep_rows", "(rollout.rewards == 1)", "(rollout.rewards > 0)"),
        ("kept rows keep the group size", "keep_rows", ".squeeze(-1), 1", ".squeeze(-1), rollout.group_size"),
        ("advantage on the padding too", "advantages", "[:, None] * rollout.response_mask",
         "[:, None].expand_as(rollout.response_mask)"),
    ],
    "kl_estimate": [
        ("d the wrong way round", "kl_estimate", "torch.clamp(logp - ref_logp", "torch.clamp(ref_logp - logp"),
        ("k3 with exp(d)", "kl_estimate", "torch.exp(-d) - 1 + d", "torch.exp(d) - 1 - d"),
        ("k2 without its half", "kl_estimate", "0.5 * d * d", "d * d"),
        ("k3 not clamped", "kl_estimate", "torch.clamp(torch.exp(-d) - 1 + d, max=10)", "torch.exp(-d) - 1 + d"),
    ],
    "clipped_surrogate": [
        ("min of the losses, not max (the pessimistic bound lost)", "clipped_surrogate",
         "torch.maximum(unclipped, clipped)", "torch.minimum(unclipped, clipped)"),
        ("sign flipped", "clipped_surrogate", "return loss, clipped > unclipped", "return -loss, clipped > unclipped"),
        ("clip fraction counts every ratio outside the range", "clipped_surrogate", "return loss, clipped > unclipped",
         "return loss, (ratio < 1 - eps_low) | (ratio > 1 + eps_high)"),
        ("ε_low on both sides", "clipped_surrogate", "torch.clamp(ratio, 1 - eps_low, 1 + eps_high)",
         "torch.clamp(ratio, 1 - eps_low, 1 + eps_low)"),
        ("dual clip caps at c, not c·|A|", "clipped_surrogate", "torch.minimum(loss, -dual_clip * advantages)",
         "torch.minimum(loss, torch.full_like(loss, dual_clip))"),
        ("log-ratio not clamped", "clipped_surrogate",
         "torch.exp(torch.clamp(logp - old_logp, -MAX_LOG_RATIO, MAX_LOG_RATIO))", "torch.exp(logp - old_logp)"),
    ],
    "policy_loss": [
        ("KL subtracted", "clipped_policy_loss", "token_loss + cfg.kl_coef", "token_loss - cfg.kl_coef"),
        ("k1 instead of k3", "clipped_policy_loss", '"k3")', '"k1")'),
        ("clip fraction over this micro-batch's tokens", "clipped_policy_loss",
         "masked_sum(clipped.float(), mask) / batch.n_tokens", "masked_sum(clipped.float(), mask) / mask.sum()"),
        ("clip fraction counts the padding", "clipped_policy_loss", "masked_sum(clipped.float(), mask)",
         "clipped.float().sum()"),
        ("--loss-agg ignored", "clipped_policy_loss", "mask, cfg.loss_agg,", 'mask, "token-mean",'),
        ("KL term even when β = 0", "clipped_policy_loss", "if cfg.kl_coef:", "if True:"),
    ],
    "pass_at_k": [
        ("samples drawn with replacement: 1 - (1 - c/n)^k", "pass_at_k",
         "1.0 - math.comb(n - c, k) / math.comb(n, k)", "1.0 - (1 - c / n) ** k"),
        ("off by one in the all-contain-a-right-one guard", "pass_at_k", "n - c < k", "n - c <= k"),
        ("the chance of no right sample, not of one", "pass_at_k", "1.0 - math.comb(n - c, k)", "math.comb(n - c, k)"),
    ],
    "head_logprobs": [
        ("temperature multiplies", "head_logprobs", ("hidden / temperature", "head.bias / temperature"),
         ("hidden * temperature", "head.bias * temperature")),
        ("the bias not divided by the temperature", "head_logprobs", "head.bias / temperature", "head.bias"),
        ("entropy of the untempered distribution", "head_logprobs", "entropy_from_logits(logits.detach())",
         "entropy_from_logits(F.linear(hidden, head.weight, head.bias).detach())"),
        ("probability, not log-probability", "head_logprobs", ".view_as(tokens)", ".view_as(tokens).exp()"),
        ("the likeliest token's log-prob, not the given token's", "head_logprobs", "tokens.flatten()",
         "logits.argmax(-1).flatten()"),
        ("no gradient to the hidden states", "head_logprobs", "F.linear(hidden / temperature",
         "F.linear(hidden.detach() / temperature"),
    ],
    "next_tokens": [
        ("draws ignore the temperature", "next_tokens", "probs = logp.exp()", "probs = logits.float().softmax(-1)"),
        ("log-probs of the distribution after the cuts", "next_tokens",
         "clamp(max=cdf.size(-1) - 1)\n    return tokens, logp.gather(",
         "clamp(max=cdf.size(-1) - 1)\n    return tokens, (probs / cdf[:, -1:]).log().gather("),
        ("top-p of the full distribution, not of what top-k left", "next_tokens",
         "covered - sorted_probs > top_p * covered[:, -1:]", "covered - sorted_probs > top_p"),
        ("top-p drops the token that reaches p", "next_tokens", "covered - sorted_probs > top_p * covered[:, -1:]",
         "covered > top_p * covered[:, -1:]"),
        ("top-p without sorting", "next_tokens", "probs.sort(dim=-1, descending=True)",
         "(probs, torch.arange(probs.size(-1)).expand_as(probs))"),
        ("greedy takes the least likely token", "next_tokens", "tokens = logits.argmax(-1)",
         "tokens = logits.argmin(-1)"),
    ],
    "sample": [
        ("EOS dropped from the mask", "sample", "< lengths[:, None]).float()",
         "< (lengths - stopped.long())[:, None]).float()"),
        ("positions count the left padding", "sample", "position = prompt_mask.sum(-1)",
         "position = torch.full_like(prompt_mask[:, 0], prompt_mask.size(1))"),
        ("rows never stop at EOS", "sample", "finished = torch.isin(token, eos_ids)",
         "finished = torch.zeros_like(token, dtype=torch.bool)"),
        ("stopped never set", "sample", "stopped[rows[finished]] = True", "pass"),
    ],
    "extract_answer": [
        ("no cut at the next turn", "extract_answer", "_NEXT_TURN.split(text.translate(_UNICODE), 1)[0]",
         "text.translate(_UNICODE)"),
        ("Unicode not mapped", "extract_answer", "_NEXT_TURN.split(text.translate(_UNICODE), 1)[0]",
         "_NEXT_TURN.split(text, 1)[0]"),
        ("a box always wins, even over a later 'the answer is'", "extract_answer",
         "if boxes is not None and not corrected:", "if boxes is not None:"),
        ("#### before boxes", "extract_answer", "if boxes is not None and not corrected:",
         "if boxes is not None and not corrected and not _HASHES.findall(text):"),
        ("the first number, not the last", "extract_answer", "numbers[-1].group()", "numbers[0].group()"),
    ],
    "ppo_token_rewards": [
        ("outcome on the last column, not each response's last token", "token_rewards",
         "last = mask.sum(-1).long() - 1", "last = torch.full_like(mask[:, 0], mask.size(1) - 1).long()"),
        ("KL added, not subtracted", "token_rewards", "rewards = -cfg.kl_coef", "rewards = cfg.kl_coef"),
        ("KL on the padding too", "token_rewards", '"k1") * mask', '"k1")'),
    ],
    "gae": [
        ("off by one: V_t where V_{t+1} belongs", "gae", "values[:, t + 1] if", "values[:, t] if"),
        ("λ forgotten", "gae", "gamma * lam * running", "gamma * running"),
        ("padding not masked", "gae", "rewards, values = rewards * mask, values * mask", "pass"),
        ("returns without V", "gae", "(advantages + values) * mask", "advantages * mask"),
        ("forward in time", "gae", "reversed(range(rewards.size(1)))", "range(rewards.size(1))"),
    ],
    "clipped_value_loss": [
        ("min instead of max", "clipped_value_loss", "torch.maximum(", "torch.minimum("),
        ("no ½", "clipped_value_loss", "0.5 * torch.maximum(", "torch.maximum("),
        ("clipped around the return, not the old value", "clipped_value_loss",
         "old_values + torch.clamp(values - old_values, -clip, clip)",
         "returns + torch.clamp(values - returns, -clip, clip)"),
    ],
    "dpo_loss": [
        ("mask forgotten", "loss", "masked_sum(logp - batch.ref_logprobs, batch.response_mask, dim=1)",
         "(logp - batch.ref_logprobs).sum(1)"),
        ("chosen and rejected swapped", "loss", "(log_ratio[:, 0] - log_ratio[:, 1])",
         "(log_ratio[:, 1] - log_ratio[:, 0])"),
        ("β outside the sigmoid", "loss", "-F.logsigmoid(margin).sum()",
         "-cfg.dpo_beta * F.logsigmoid(margin / cfg.dpo_beta).sum()"),
        ("mean over this micro-batch's pairs", "loss", "n_pairs = batch.n_rows // 2", "n_pairs = len(log_ratio)"),
        ("no reference model", "loss", "logp - batch.ref_logprobs", "logp"),
    ],
    "rl_step": [
        ("keep_rows ignored", "rl_step", 'if hasattr(algo, "keep_rows"):', "if False:"),
        ("the sampler never gets the new weights", "rl_step", "sampler.load_state_dict(model.state_dict())", "pass"),
        ("reference log-probs from the policy", "rl_step", "score(reference, rollout.to(reference.device)",
         "score(model, rollout.to(reference.device)"),
        ("no update", "rl_step", "update(model, optimizer, batch, algo, cfg, value_head) if batch is not None else {}",
         "{}"),
        ("old log-probs scored after the update", "rl_step",
         "update(model, optimizer, batch, algo, cfg, value_head) if batch is not None else {}\n",
         ("update(model, optimizer, batch, algo, cfg, value_head) if batch is not None else {}\n"
          "    rollout = dataclasses.replace(rollout, old_logprobs=score(model, rollout, 1.0, 64)[0])\n")),
    ],
}


def module_of(exercise):
    import importlib
    return importlib.import_module(exercise.file.removesuffix(".py").replace("/", "."))


def mutant(exercise, function, old, new):
    """The function of `exercise` with the substitutions old -> new made in its source, compiled in its module."""
    module = module_of(exercise)
    source = textwrap.dedent(inspect.getsource(getattr(module, function)))
    for o, n in zip(*((old, new) if isinstance(old, tuple) else ((old,), (new,)))):
        assert source.count(o) == 1, f"{exercise.name}.{function}: {o!r} is not in the source exactly once"
        source = source.replace(o, n)
    namespace = dict(vars(module))
    exec(compile(source, f"<mutant of {exercise.file}:{function}>", "exec"), namespace)
    return namespace[function]


def swap(original, replacement, monkeypatch):
    """Every name in the project's modules that refers to `original` now refers to `replacement`."""
    root, tests = str(exercises.ROOT), str(exercises.ROOT / "tests")
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None) or ""
        if path.startswith(root) and not path.startswith(tests):
            for name, value in list(vars(module).items()):
                if value is original:
                    monkeypatch.setattr(module, name, replacement)


def marked_tests(name):
    return [f for f in vars(test_exercises).values() if callable(f) and f.__name__.startswith("test_")
            and any(m.name == "exercise" and m.args == (name,) for m in getattr(f, "pytestmark", []))]


def failures(name, tiny, stop_at_first=True):
    """The names of the exercise's tests that fail as things are now."""
    failed = []
    for test in marked_tests(name):
        with pytest.MonkeyPatch.context() as mp:
            fixtures = {"tiny": tiny, "monkeypatch": mp}
            try:
                test(**{p: fixtures[p] for p in inspect.signature(test).parameters})
            except (Exception, pytest.fail.Exception):  # an assertion, pytest.raises unmet, a crash: a failure
                failed.append(test.__name__)
                if stop_at_first:
                    break
    return failed


CASES = [(e, m[0]) for e, ms in MUTANTS.items() for m in ms]


@pytest.mark.parametrize("name, mistake", CASES, ids=[f"{e}: {m}" for e, m in CASES])
def test_the_exercise_tests_catch_the_mutant(name, mistake, tiny, monkeypatch):
    _, function, old, new = next(m for m in MUTANTS[name] if m[0] == mistake)
    exercise = exercises.BY_NAME[name]
    swap(getattr(module_of(exercise), function), mutant(exercise, function, old, new), monkeypatch)
    assert failures(name, tiny), f"no test of {name} catches: {mistake}"


@pytest.mark.parametrize("name", [e.name for e in exercises.EXERCISES])
def test_every_test_of_an_exercise_fails_on_its_blank_stub(name, tiny, monkeypatch):
    exercise = exercises.BY_NAME[name]
    module = module_of(exercise)
    source = exercises.blank_bodies(inspect.getsource(module), exercise)
    namespace = dict(vars(module))
    exec(compile(source, f"<student copy of {exercise.file}>", "exec"), namespace)
    for function in exercise.functions:
        swap(getattr(module, function), namespace[function], monkeypatch)
    tests = marked_tests(name)
    assert tests and failures(name, tiny, stop_at_first=False) == [t.__name__ for t in tests]


def test_every_exercise_has_tests_mutants_and_documented_functions():
    for e in exercises.EXERCISES:
        source = (exercises.ROOT / e.file).read_text()
        functions = exercises.top_level_functions(source)
        assert all(f in functions and exercises.has_docstring(functions[f]) for f in e.functions), e.name
        assert len(MUTANTS[e.name]) >= 2 and marked_tests(e.name), e.name
        assert set(e.needs) <= set(exercises.BY_NAME), e.name
    assert len(exercises.EXERCISES) >= 12


def test_a_blank_body_keeps_signature_docstring_and_every_other_byte():
    e = exercises.BY_NAME["gae"]
    source = (exercises.ROOT / e.file).read_text()
    blank = exercises.blank_bodies(source, e)
    assert exercises.is_blank(blank, e) and not exercises.is_blank(source, e)
    node = exercises.top_level_functions(source)["gae"]
    lines, blank_lines = source.splitlines(keepends=True), blank.splitlines(keepends=True)
    docstring_end = node.body[0].end_lineno
    assert blank_lines[:docstring_end] == lines[:docstring_end]          # everything up to the docstring's end
    assert blank_lines[docstring_end] == '    raise NotImplementedError("exercise gae: see README, Teaching")\n'
    assert blank_lines[docstring_end + 1:] == lines[node.end_lineno:]    # everything after the body


def test_student_copy_of_a_week(tmp_path, capsys):
    out = tmp_path / "course"
    exercises.main(["student-copy", str(out), "--week", "1"])
    week_1 = [e for e in exercises.EXERCISES if e.week == 1]
    for e in exercises.EXERCISES:
        assert exercises.is_blank((out / e.file).read_text(), e) == (e in week_1), e.name
    assert not (out / "tests" / "test_exercise_mutants.py").exists()
    assert (out / "README.md").read_bytes() == (exercises.ROOT / "README.md").read_bytes()
    assert "student copy with 9 exercises blank" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists and is not empty"):
        exercises.main(["student-copy", str(out)])
    with pytest.raises(SystemExit, match="--only: no exercise nope"):
        exercises.main(["student-copy", str(tmp_path / "other"), "--only", "gae,nope"])


def table():
    """Exercise x mutants caught, run outside pytest (python tests/test_exercise_mutants.py table)."""
    import tempfile

    import minireason
    from algorithms import models
    with tempfile.TemporaryDirectory() as tmp:
        models.build_tiny_model(Path(tmp), minireason.TINY_MODEL)
        tiny = minireason.load_model(tmp, Path(tmp), "cpu")
        print("| exercise | tests | mutants caught | the mutants |\n|---|---|---|---|")
        for e in exercises.EXERCISES:
            caught = []
            for mistake, function, old, new in MUTANTS[e.name]:
                with pytest.MonkeyPatch.context() as mp:
                    swap(getattr(module_of(e), function), mutant(e, function, old, new), mp)
                    caught.append((mistake, bool(failures(e.name, tiny))))
            print(f"| {e.name} | {len(marked_tests(e.name))} | {sum(c for _, c in caught)}/{len(caught)} | "
                  + "; ".join(m + ("" if c else " (MISSED)") for m, c in caught) + " |")


def sign_flipped(flags):
    """The end-to-end check with GRPO's advantages negated: the reward must not rise (so the check exits 1)."""
    e = exercises.BY_NAME["group_advantages"]
    _, function, old, new = next(m for m in MUTANTS["group_advantages"] if m[0] == "sign flipped")
    with pytest.MonkeyPatch.context() as mp:
        swap(getattr(module_of(e), function), mutant(e, function, old, new), mp)
        return exercises.main(["end-to-end", *flags])


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else None
    sys.exit(table() if command == "table" else sign_flipped(sys.argv[2:]) if command == "sign-flipped" else
             print(__doc__.split("\n\n")[1]))
