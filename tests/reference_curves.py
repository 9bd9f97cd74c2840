"""Is my run on the expected curve? The default run's held-out accuracy and reward per step, recorded over seeds,
and a check of any run folder against them (not a pytest test; run from the repo root):

    python tests/reference_curves.py check runs/grpo-seed0        # after: python minireason.py --algo grpo
    python tests/reference_curves.py record RUN_DIR RUN_DIR ...    # remake tests/reference_curves.json

A run is on the curve when each of its held-out accuracies, and its training reward averaged over each window of
WINDOW steps, lies within the band of the recorded seeds (their lowest and highest) widened by a margin for the
noise one more seed adds: ACCURACY_MARGIN on the held-out questions, REWARD_MARGIN on a window's reward.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

CURVES = Path(__file__).with_name("reference_curves.json")
WINDOW = 5              # steps per reward window: one step's reward (256 samples) is noisy, five steps' less so
ACCURACY_MARGIN = 0.03  # about one binomial standard deviation on 500 held-out questions at 50 %: √(.25/500) ≈ .022
REWARD_MARGIN = 0.05
# the settings that decide the curve: a run with other values is not expected to follow it
SETTINGS = ("algo", "model", "data", "n_train", "n_chains", "n_test", "steps", "prompts_per_step", "group_size",
            "max_new_tokens", "temperature", "lr", "epochs", "minibatches", "kl_coef", "sft_steps", "sft_lr",
            "sft_batch", "loss_agg", "partial_reward", "lora")


def read_run(run_dir):
    """(config, {step: held-out accuracy}, {window's first step: mean training reward}) of a run folder."""
    run_dir = Path(run_dir)
    try:
        config = json.loads((run_dir / "config.json").read_text())
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{run_dir}: not a finished run folder of minireason.py ({e})")
    accuracy = {m["step"]: m["eval/accuracy"] for m in lines if "eval/accuracy" in m}
    rewards = {m["step"]: m["train/reward"] for m in lines if "train/reward" in m}
    windows = {}
    for step in sorted(rewards):
        windows.setdefault((step - 1) // WINDOW * WINDOW + 1, []).append(rewards[step])
    return config, accuracy, {first: statistics.mean(values) for first, values in windows.items()
                              if len(values) == WINDOW}


def record(run_dirs):
    """The reference: per step the seeds' mean, lowest and highest held-out accuracy; per window their reward."""
    runs = [read_run(d) for d in run_dirs]
    configs = [{k: c.get(k) for k in SETTINGS} for c, _, _ in runs]
    if any(c != configs[0] for c in configs):
        raise SystemExit("record: the runs differ in settings other than the seed")

    def band(curves):
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        return {str(s): [statistics.mean(c[s] for c in curves), min(c[s] for c in curves), max(c[s] for c in curves)]
                for s in steps}
    return {"settings": configs[0], "seeds": [c["seed"] for c, _, _ in runs],
            "accuracy": band([a for _, a, _ in runs]), "reward": band([r for _, _, r in runs])}


def check(run_dir, reference):
    """Lines saying, point by point, where the run lies against the band; and whether it is on the curve."""
    config, accuracy, reward = read_run(run_dir)
    other = {k: (config.get(k), v) for k, v in reference["settings"].items() if config.get(k) != v}
    lines = [f"{run_dir}: settings differ from the reference run's, so its curve may too: "
             + ", ".join(f"{k} {mine} (reference {theirs})" for k, (mine, theirs) in other.items())] if other else []
    points = [(f"held-out accuracy, step {s}", accuracy.get(int(s)), band, ACCURACY_MARGIN)
              for s, band in reference["accuracy"].items()]
    points += [(f"reward, steps {s}-{int(s) + WINDOW - 1}", reward.get(int(s)), band, REWARD_MARGIN)
               for s, band in reference["reward"].items()]
    on_curve, compared = True, 0
    for what, mine, (mean, low, high), margin in points:
        if mine is None:  # a shorter run, or one evaluated at other steps
            continue
        inside, compared = low - margin <= mine <= high + margin, compared + 1
        on_curve &= inside
        lines.append(f"  {what:<32} {mine:6.3f}   expected {mean:.3f} (seeds {low:.3f} to {high:.3f}, "
                     f"± {margin})   {'ok' if inside else 'OUTSIDE'}")
    if not compared:
        raise SystemExit(f"{run_dir}: no step in common with the reference curves (seeds {reference['seeds']})")
    verdict = "on the expected curve" if on_curve else (
        "OFF the expected curve: compare its config.json with the reference settings above, and its "
        "samples/step-N.jsonl with a good run's")
    return lines + [f"{run_dir}: {verdict} ({compared} points, reference seeds {reference['seeds']})"], on_curve


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="a run folder against the reference curves").add_argument("run_dir")
    sub.add_parser("record", help="write the reference curves from runs of seeds").add_argument("run_dirs", nargs="+")
    args = p.parse_args(argv)
    if args.command == "record":
        CURVES.write_text(json.dumps(record(args.run_dirs), indent=1) + "\n")
        print(f"{CURVES}: {len(args.run_dirs)} seeds")
        return 0
    lines, on_curve = check(args.run_dir, json.loads(CURVES.read_text()))
    print("\n".join(lines))
    return 0 if on_curve else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
