"""--compare: the verdicts on the papers' findings, the report, and one real (very short) comparison."""
import json

import pytest

import minireason as M
from algorithms import compare

# final held-out accuracy per arm for three seeds, chosen so each finding has a known verdict
FINAL = {"sft": [0.60, 0.61, 0.62], "raft": [0.50, 0.52, 0.51], "raftpp": [0.55, 0.56, 0.54],
         "reinforce": [0.40, 0.42, 0.41], "reinforce_rej": [0.50, 0.51, 0.49], "grpo": [0.52, 0.53, 0.51],
         "ppo": [0.45, 0.47, 0.46], "dpo": [0.44, 0.45, 0.46], "reinforce_rej-all-wrong": [0.51, 0.52, 0.50],
         "grpo-no-std": [0.42, 0.44, 0.43]}
EARLY = {"raftpp": [0.50, 0.51, 0.52], "grpo": [0.45, 0.46, 0.44]}
ENTROPY = {"raft": 0.02, "raftpp": 0.03, "grpo": 0.05}


def fake_runs(root, final=FINAL):
    """Run folders as minireason writes them: config.json and metrics.jsonl (eval at 0, 5, 10)."""
    for arm, finals in final.items():
        for seed, final in enumerate(finals):
            run_dir = root / f"{arm}-seed{seed}"
            run_dir.mkdir(parents=True)
            (run_dir / "config.json").write_text(json.dumps(dict(data="arith", model="tiny", steps=10, n_test=500,
                                                                 prompts_per_step=32, group_size=4)))
            early = EARLY.get(arm, [0.45] * 3)[seed]
            records = [{"step": 0, "eval/accuracy": 0.4}]
            for step in range(1, 11):
                r = {"step": step, "train/entropy": ENTROPY.get(arm, 0.06) + 0.001 * seed, "train/kl": 0.01,
                     "time/rl_seconds": 3.0 * step}
                r.update({5: {"eval/accuracy": early}, 10: {"eval/accuracy": final}}.get(step, {}))
                records.append(r)
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_verdicts():
    assert compare.at_least([3, 4, 5], [1, 2, 3])[0] == "**supported**"
    assert compare.at_least([3, 4, 5], [2, 4, 5])[0] == "**supported, within seed noise**"
    assert compare.at_least([2, 4, 5], [3, 4, 5])[0] == "**not supported** (within seed noise)"
    assert compare.at_least([1, 2, 3], [3, 4, 5])[0] == "**contradicted**"
    diff, noise = compare.difference([1, 2, 3], [3, 4, 5])
    assert diff == -2 and noise == pytest.approx(2 * (2 / 3) ** 0.5)  # 2 * sqrt(1/3 + 1/3)
    assert compare.about_equal([1, 2, 3], [1.5, 2.5, 3.5])[0] == "**supported**"


def test_report_states_each_finding_with_its_numbers(tmp_path):
    fake_runs(tmp_path)
    text = compare.write_report(tmp_path, "python minireason.py --compare", wall_seconds=600, jobs=2).read_text()
    assert "| raftpp | 40.0 ± 0.0 | 51.0 ± 1.0 | 55.0 ± 1.0 | 0.031 | 0.0100 | 30 |" in text
    findings = text.split("## The papers' findings")[1]
    assert "Reinforce-Rej ≥ Reinforce: **supported** — reinforce_rej − reinforce = +9.0 points" in findings
    assert "remove-all-wrong ≈ GRPO: **supported**" in findings
    assert "removing all-wrong groups alone gives +10.0 of GRPO's +11.0 points over Reinforce" in findings
    assert "no std normalisation ≈ GRPO: **not supported** — grpo-no-std − grpo = -9.0 points" in findings
    assert "early (step 5): RAFT++ ≥ GRPO: **supported**" in findings
    assert "late (step 10): GRPO ≥ RAFT++: **contradicted**" in findings
    assert "RAFT below GRPO: **supported** — grpo − raft = +0.030" in findings
    assert "PPO ≥ SFT at step 10: **contradicted** — ppo − sft = -15.0 points" in findings
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("grpo, share", [
    ([0.41, 0.42, 0.40], "GRPO − Reinforce = +0.0 points, within seed noise (±1.6): here there is no gain to explain"),
    ([0.30, 0.31, 0.32], "GRPO − Reinforce = -10.0 points, beyond seed noise, GRPO behind (±1.6): here there is no gain"),
])
def test_report_says_when_grpo_has_no_gain_over_reinforce_to_explain(tmp_path, grpo, share):
    fake_runs(tmp_path, {**FINAL, "grpo": grpo})
    text = compare.write_report(tmp_path, "python minireason.py --compare", wall_seconds=600, jobs=2).read_text()
    assert share in text


def test_compare_runs_every_arm_end_to_end(tmp_path, capsys):
    M.main(["--compare", "--seeds", "1", "--steps", "1", "--sft-steps", "3", "--n-train", "16", "--n-test", "8",
            "--prompts-per-step", "4", "--max-new-tokens", "8", "--eval-every", "1", "--kl-coef", "0.01",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "cmp")])
    results = (tmp_path / "cmp" / "results.md").read_text()
    for arm in compare.PAPER_ARMS:  # the default --arms
        assert f"\n| {arm} | " in results
        config = json.loads((tmp_path / "cmp" / f"{arm}-seed0" / "config.json").read_text())
        assert (config["steps"], config["group_size"], config["kl_coef"]) == (1, 4, 0.01)  # flags reach every run
    assert json.loads((tmp_path / "cmp" / "grpo-no-std-seed0" / "config.json").read_text())["std_normalize"] is False
    assert len(list((tmp_path / "cmp").glob("*-seed0/metrics.jsonl"))) == len(compare.PAPER_ARMS) == 10
    assert "## The papers' findings" in capsys.readouterr().out


def test_arms_flag_names_arms_of_the_table_once_each(capsys):
    assert M.parse_args(["--compare", "--arms", "grpo, dapo,grpo"]).arms == ["grpo", "dapo"]
    assert M.parse_args(["--compare"]).arms == list(FINAL)  # the default: the papers' ten arms, as before
    with pytest.raises(SystemExit):
        M.parse_args(["--compare", "--arms", "grpo,dapo2"])
    assert "argument --arms: no arm named 'dapo2'; there are sft, raft" in capsys.readouterr().err


def test_report_leaves_out_the_findings_whose_arms_were_not_run(tmp_path):
    fake_runs(tmp_path / "some", {arm: FINAL[arm] for arm in ("grpo", "raftpp")} | {"dapo": [0.55, 0.56, 0.57]})
    text = compare.write_report(tmp_path / "some", "python minireason.py --compare", 600, jobs=2).read_text()
    assert "| dapo | 40.0 ± 0.0 | 45.0 ± 0.0 | 56.0 ± 1.0 |" in text
    findings = text.split("## The papers' findings")[1]
    assert "2. *RAFT++ learns faster than GRPO early" in findings   # its two arms ran
    assert all(f"{n}. *" not in findings for n in (1, 3, 4))         # each lacks an arm
    fake_runs(tmp_path / "none", {"grpo": FINAL["grpo"], "dapo": [0.55, 0.56, 0.57]})
    text = compare.write_report(tmp_path / "none", "python minireason.py --compare", 600, jobs=2).read_text()
    assert "None of them: each needs arms that were not run" in text


def test_compare_runs_the_arms_asked_for_and_only_those(tmp_path):
    M.main(["--compare", "--arms", "rloo,dapo", "--seeds", "1", "--steps", "1", "--sft-steps", "3", "--n-train", "16",
            "--n-test", "8", "--prompts-per-step", "4", "--max-new-tokens", "8", "--eval-every", "1",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "cmp")])
    assert sorted(p.parent.name for p in (tmp_path / "cmp").glob("*/metrics.jsonl")) == ["dapo-seed0", "rloo-seed0"]
    results = (tmp_path / "cmp" / "results.md").read_text()
    assert "\n| rloo | " in results and "\n| dapo | " in results and "2 arms × 1 seeds" in results
    config = json.loads((tmp_path / "cmp" / "dapo-seed0" / "config.json").read_text())
    assert (config["algo"], config["clip_high"], config["group_size"]) == ("dapo", 0.28, 4)  # its paper's defaults
