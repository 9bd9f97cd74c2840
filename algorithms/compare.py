"""The papers' comparison in miniature: every algorithm from the same warm-up, over seeds, in one command.

    python minireason.py --compare          # 10 arms x 3 seeds on the default task, under an hour on 2 CPU cores
    python minireason.py --compare --arms grpo,drgrpo,dapo,gspo,rloo,reinforcepp   # any arms of ARMS

Each (arm, seed) is an ordinary run of minireason.py in a process of its own, with its own run folder
(<out>/<arm>-seed<s>/: config.json, metrics.jsonl, log.txt). --jobs of them run at a time with one CPU thread
each: the tiny model gains little from a second thread, so two processes on two cores do about twice the
work. Every arm has the same budget per step, prompts_per_step x group_size sampled responses (sft: as many
reference chains). Afterwards this module reads the metrics back and writes <out>/results.md (the table and
the findings of arXiv 2504.11343 and 2401.08967, each with whether this run supports it) and <out>/curves.png.
"""
import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch

from algorithms import common

MAIN = Path(__file__).resolve().parents[1] / "minireason.py"

# arm name -> the flags that make it. The default comparison: the algorithms of 2504.11343 and ReFT, and (the
# last two) the ablations 2504.11343 uses to explain GRPO's gain.
PAPER_ARMS = {
    "sft": ["--algo", "sft"],  # continued SFT: ReFT's baseline
    "raft": ["--algo", "raft"],
    "raftpp": ["--algo", "raftpp"],
    "reinforce": ["--algo", "reinforce"],
    "reinforce_rej": ["--algo", "reinforce_rej"],
    "grpo": ["--algo", "grpo"],
    "ppo": ["--algo", "ppo"],
    "dpo": ["--algo", "dpo"],
    # Reinforce with only the all-wrong groups removed
    "reinforce_rej-all-wrong": ["--algo", "reinforce_rej", "--reject-groups", "all-wrong"],
    "grpo-no-std": ["--algo", "grpo", "--no-std-normalize"],
}
# the variants of GRPO since 2025, each a file in algorithms/: compared with --arms
VARIANT_ARMS = {name: ["--algo", name] for name in ("drgrpo", "dapo", "gspo", "rloo", "reinforcepp")}
ARMS = PAPER_ARMS | VARIANT_ARMS
# --compare's own defaults (flags still win): 32 questions x 4 samples is the paper's n = 4; 40 steps give the late
# findings (GRPO catching RAFT++ up once RAFT++'s entropy has collapsed) room, and keep the 30 runs under an hour on
# 2 cores; evaluating every 5 steps gives the early-vs-late findings points to stand on.
DEFAULTS = dict(group_size=4, eval_every=5, steps=40)
LAST = 5  # final entropy and KL are averaged over the last LAST steps (one step's value is noisy)


def add_flags(flags):
    flags.add_argument("--compare", action="store_true", help="train every algorithm and two ablations (or --arms) "
                       "over --seeds seeds with the other flags given, then write results.md and curves.png")
    flags.add_argument("--arms", type=arm_list, default=",".join(PAPER_ARMS),
                       help=f"--compare: the arms to run, comma-separated, of: {', '.join(ARMS)}")
    flags.add_argument("--seeds", type=common.at_least(1), default=3, help="--compare: seeds per algorithm")
    flags.add_argument("--jobs", type=common.at_least(1), default=len(os.sched_getaffinity(0)),
                       help="--compare: runs at a time")


def arm_list(text):
    """--arms: comma-separated names of ARMS -> a list, each once, in the order given."""
    arms = list(dict.fromkeys(name.strip() for name in text.split(",")))
    unknown = [name for name in arms if name not in ARMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"no arm named {', '.join(map(repr, unknown))}; there are {', '.join(ARMS)}")
    return arms


def main(cfg, argv):
    """`python minireason.py --compare ...`: every run gets the user's flags but those of the comparison itself."""
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--seeds", "--jobs", "--out", "--algo", "--arms"):
        own.add_argument(flag)
    own.add_argument("--compare", action="store_true")
    shared_args = own.parse_known_args(argv)[1] + [f"--{k.replace('_', '-')}={getattr(cfg, k)}" for k in DEFAULTS]
    report = run(Path(cfg.out), shared_args, cfg.seeds, cfg.jobs, " ".join(["python minireason.py", *argv]), cfg.arms)
    print(f"\n{report.read_text()}\nwritten to {report} and {report.parent / 'curves.png'}")


def run(out, shared_args, seeds, jobs, command, arms):
    """Train each of `arms` for every seed, `jobs` processes at a time, then write the report.
    shared_args: the user's flags, passed on to every run. Returns the path of results.md."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, len(os.sched_getaffinity(0)) // jobs)))
    runs = [(arm, seed) for seed in range(seeds) for arm in arms]

    def train_one(arm, seed):
        run_dir = out / f"{arm}-seed{seed}"
        run_dir.mkdir(exist_ok=True)
        # later flags win in argparse, so the arm's own flags override any the user gave
        cmd = [sys.executable, str(MAIN), *shared_args, *ARMS[arm], "--seed", str(seed), "--out", str(run_dir),
               "--no-sft-baseline"]
        with open(run_dir / "log.txt", "w") as log:
            return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode

    start, failed = time.time(), []
    with ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(train_one, arm, seed): (arm, seed) for arm, seed in runs}
        for done, future in enumerate(as_completed(futures), 1):
            arm, seed = futures[future]
            status = "ok" if future.result() == 0 else f"FAILED (see {out / f'{arm}-seed{seed}' / 'log.txt'})"
            failed += [] if future.result() == 0 else [f"{arm} seed {seed}"]
            print(f"[{done}/{len(runs)}, {time.time() - start:4.0f} s] {arm} seed {seed}: {status}", flush=True)
    report = write_report(out, command, wall_seconds=time.time() - start, jobs=jobs)
    if failed:
        raise SystemExit(f"--compare: {len(failed)} run(s) failed: {', '.join(failed)}; the report covers the rest")
    return report


# ----------------------------------------------------------------------------------------------------
# Reading the runs back


def load_runs(out):
    """{arm: [per-seed metrics: the list of metrics.jsonl records]} for the runs found under `out`."""
    runs = {}
    for arm in ARMS:
        paths = sorted(out.glob(f"{arm}-seed*/metrics.jsonl"))
        seeds = [[json.loads(line) for line in p.read_text().splitlines()] for p in paths]
        if seeds and all(seeds):
            runs[arm] = seeds
    return runs


def curve(records, key):
    """{step: value} of one run for a metric."""
    return {r["step"]: r[key] for r in records if key in r}


def across_seeds(seeds, key, step=None, last=None):
    """Per-seed values of a metric: at `step`, or averaged over the `last` steps it was logged at."""
    values = []
    for records in seeds:
        c = curve(records, key)
        values.append(c[step] if step is not None else statistics.fmean([c[s] for s in sorted(c)[-last:]]))
    return values


def mean_std(values):
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def difference(a, b):
    """mean(a) - mean(b), and the noise on it: two standard errors of the difference over seeds."""
    noise = 2 * math.sqrt(sum(statistics.variance(v) / len(v) if len(v) > 1 else 0.0 for v in (a, b)))
    return statistics.fmean(a) - statistics.fmean(b), noise


def at_least(a, b):
    """Verdict on "a >= b" (a, b: per-seed values)."""
    diff, noise = difference(a, b)
    if diff > noise:
        return "**supported**", diff, noise
    if diff >= 0:
        return "**supported, within seed noise**", diff, noise
    return ("**not supported** (within seed noise)" if diff >= -noise else "**contradicted**"), diff, noise


def about_equal(a, b):
    """Verdict on "a ≈ b": the gap is within seed noise."""
    diff, noise = difference(a, b)
    return ("**supported**" if abs(diff) <= noise else "**not supported**"), diff, noise


# ----------------------------------------------------------------------------------------------------
# The report


def pct(values):
    m, s = mean_std([100 * v for v in values])
    return f"{m:.1f} ± {s:.1f}"


def findings(runs, eval_steps):
    """The papers' claims, each checked on final (and, for 2., early) held-out accuracy or final entropy."""
    final, early = eval_steps[-1], eval_steps[1]
    acc = {arm: [100 * v for v in across_seeds(seeds, "eval/accuracy", final)] for arm, seeds in runs.items()}
    acc_early = {arm: [100 * v for v in across_seeds(seeds, "eval/accuracy", early)] for arm, seeds in runs.items()}
    ent = {arm: across_seeds(seeds, "train/entropy", last=LAST) for arm, seeds in runs.items()}

    def check(claim, test, values, a, b, digits=1, unit=" points"):
        """One bullet: the claim, its verdict, and the numbers behind it."""
        verdict, diff, noise = test(values[a], values[b])
        return f"   - {claim}: {verdict} — {a} − {b} = {diff:+.{digits}f}{unit} (seed noise ±{noise:.{digits}f})."

    out = []
    if {"reinforce", "reinforce_rej", "grpo", "reinforce_rej-all-wrong", "grpo-no-std"} <= set(acc):
        gain, noise = difference(acc["grpo"], acc["reinforce"])
        explained, _ = difference(acc["reinforce_rej-all-wrong"], acc["reinforce"])
        if gain > noise:
            share = (f"removing all-wrong groups alone gives {explained:+.1f} of GRPO's {gain:+.1f} points "
                     "over Reinforce")
        else:
            where = "within seed noise" if gain >= -noise else "beyond seed noise, GRPO behind"
            share = (f"GRPO − Reinforce = {gain:+.1f} points, {where} (±{noise:.1f}): here there is no gain to "
                     f"explain; removing all-wrong groups alone gives {explained:+.1f}")
        out.append("\n".join([
            "1. *Reinforce-Rej ≥ Reinforce; most of GRPO's gain over Reinforce comes from removing all-wrong groups, "
            "not from std normalisation* (2504.11343 §4)",
            check("Reinforce-Rej ≥ Reinforce", at_least, acc, "reinforce_rej", "reinforce"),
            check("remove-all-wrong ≈ GRPO", about_equal, acc, "reinforce_rej-all-wrong", "grpo") + f" ({share}.)",
            check("no std normalisation ≈ GRPO", about_equal, acc, "grpo-no-std", "grpo")]))
    if {"raftpp", "grpo"} <= set(acc):
        out.append("\n".join([
            "2. *RAFT++ learns faster than GRPO early; GRPO catches up or passes it later* (2504.11343 §3)",
            check(f"early (step {early}): RAFT++ ≥ GRPO", at_least, acc_early, "raftpp", "grpo"),
            check(f"late (step {final}): GRPO ≥ RAFT++", at_least, acc, "grpo", "raftpp")]))
    if {"raft", "raftpp", "grpo"} <= set(ent):
        out.append("\n".join([
            "3. *Training on positives only (RAFT, RAFT++) collapses entropy faster than GRPO* (2504.11343 §3); "
            f"entropy averaged over the last {LAST} steps, nats per token",
            check("RAFT below GRPO", at_least, ent, "grpo", "raft", digits=3, unit=""),
            check("RAFT++ below GRPO", at_least, ent, "grpo", "raftpp", digits=3, unit="")]))
    if {"ppo", "sft"} <= set(acc):
        out.append("\n".join([
            "4. *ReFT: SFT warm-up + PPO beats continued SFT on held-out questions* (2401.08967 §4)",
            check(f"PPO ≥ SFT at step {final}", at_least, acc, "ppo", "sft")]))
    return out


def budget_notes(runs, config):
    """The arms whose samples per step differ from the others', in brackets (or nothing, when none of them ran)."""
    notes = {"sft": f"sft: {config['prompts_per_step'] * config['group_size']} reference chains",
             "dapo": "dapo: more questions while too few groups can teach, see train/sampled_rows"}
    return f" ({'; '.join(note for arm, note in notes.items() if arm in runs)})" if set(notes) & set(runs) else ""


def write_report(out, command, wall_seconds, jobs):
    """results.md and curves.png from the runs under `out`. Returns the path of results.md."""
    runs = load_runs(out)
    if not runs:
        raise SystemExit(f"--compare: no finished runs under {out}")
    config = json.loads(next(out.glob("*-seed0/config.json")).read_text())
    eval_steps = sorted(curve(next(iter(runs.values()))[0], "eval/accuracy"))
    n_seeds = min(len(s) for s in runs.values())
    lines = [f"# minireason --compare: {len(runs)} arms × {n_seeds} seeds",
             "",
             f"`{command}`: the runs took {wall_seconds / 60:.1f} min wall on {platform.machine()} with "
             f"{len(os.sched_getaffinity(0))} CPU cores ({jobs} at a time), torch {torch.__version__}.",
             f"Task `{config['data']}`, model `{config['model']}`, {config['steps']} steps of "
             f"{config['prompts_per_step']} questions × {config['group_size']} samples{budget_notes(runs, config)}, "
             "all from the same cached warm-up. Per-run config and metrics: `<arm>-seed<s>/`.",
             "",
             f"## Held-out greedy accuracy, % (mean ± std over {n_seeds} seeds, {config['n_test']} questions)",
             "",
             "| arm | " + " | ".join(f"step {s}" for s in eval_steps)
             + f" | entropy (last {LAST}) | KL (last {LAST}) | RL time, s |",
             "|---" * (len(eval_steps) + 4) + "|"]
    for arm, seeds in runs.items():
        kl = f"{mean_std(across_seeds(seeds, 'train/kl', last=LAST))[0]:.4f}" if "train/kl" in seeds[0][-1] else "—"
        lines.append(f"| {arm} | " + " | ".join(pct(across_seeds(seeds, "eval/accuracy", s)) for s in eval_steps)
                     + f" | {mean_std(across_seeds(seeds, 'train/entropy', last=LAST))[0]:.3f} | {kl} | "
                     + f"{mean_std(across_seeds(seeds, 'time/rl_seconds', last=1))[0]:.0f} |")
    lines += ["", "Entropy is the policy's mean per-token entropy on the responses it trains on (sft: on the "
              "reference chains); KL is k3 to the warm-up on the same tokens. Seed noise below is two standard "
              "errors of the difference of two arms' means.", "", "## The papers' findings", ""]
    lines += (findings(runs, eval_steps) or ["None of them: each needs arms that were not run (the default --arms)."]
              + ["", "![curves](curves.png)", ""])
    (out / "results.md").write_text("\n".join(lines))
    plot(runs, out / "curves.png")
    return out / "results.md"


def plot(runs, path):
    """Held-out accuracy and training entropy vs step: one line per arm (mean over seeds), min-max band."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    colours = plt.cm.tab10 if len(runs) <= 10 else plt.cm.tab20  # one colour per arm
    for i, (arm, seeds) in enumerate(runs.items()):
        style = dict(color=colours(i), linestyle="--" if "-" in arm else "-", label=arm)
        for ax, key, scale in ((axes[0], "eval/accuracy", 100), (axes[1], "train/entropy", 1)):
            steps = sorted(curve(seeds[0], key))
            values = [[scale * curve(s, key)[step] for s in seeds] for step in steps]
            ax.plot(steps, [statistics.fmean(v) for v in values], **style)
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=style["color"], alpha=0.12)
    axes[0].set(xlabel="RL step", ylabel="held-out greedy accuracy, %", title="accuracy (band: min–max over seeds)")
    axes[1].set(xlabel="RL step", ylabel="entropy, nats / token", title="policy entropy on training responses")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
