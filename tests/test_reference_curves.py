"""tests/reference_curves.py: the reference curves of the default run, and the check of a run against them."""
import json

import pytest

import minireason as M
import reference_curves as R

SETTINGS = {k: "x" for k in R.SETTINGS}


def fake_run(path, seed, accuracy, rewards, **settings):
    """A run folder as minireason.py writes it: config.json, and metrics.jsonl with rewards per step and
    held-out accuracy at the steps of `accuracy`."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(SETTINGS | settings | {"seed": seed}))
    lines = [{"step": 0, "eval/accuracy": accuracy[0]}]
    for step, r in enumerate(rewards, 1):
        evaluated = {"eval/accuracy": accuracy[step]} if step in accuracy else {}
        lines.append({"step": step, "train/reward": r} | evaluated)
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    return path


@pytest.fixture
def reference(tmp_path):
    # three seeds, 10 steps: accuracy 0.40 -> 0.50 / 0.52 / 0.54 at step 10, rewards 0.5 then 0.6 / 0.7 / 0.8
    runs = [fake_run(tmp_path / f"s{s}", s, {0: 0.40, 10: 0.50 + 0.02 * s}, [0.5] * 5 + [0.6 + 0.1 * s] * 5)
            for s in range(3)]
    return R.record(runs)


def test_record_keeps_mean_lowest_and_highest_per_point(reference):
    assert reference["seeds"] == [0, 1, 2]
    assert reference["accuracy"]["10"] == pytest.approx([0.52, 0.50, 0.54])
    # windows of 5 steps: steps 1-5 all 0.5; steps 6-10 0.6, 0.7, 0.8
    assert reference["reward"] == {"1": pytest.approx([0.5, 0.5, 0.5]), "6": pytest.approx([0.7, 0.6, 0.8])}


def test_a_run_within_the_band_and_its_margin_is_on_the_curve(reference, tmp_path):
    # step 10: 0.565 is above the seeds' 0.54 but within the 0.03 margin; rewards inside
    lines, on_curve = R.check(fake_run(tmp_path / "mine", 7, {0: 0.40, 10: 0.565}, [0.52] * 5 + [0.75] * 5),
                              reference)
    assert on_curve and "on the expected curve (4 points" in lines[-1]


def test_a_run_that_does_not_learn_is_off_the_curve(reference, tmp_path):
    # held-out accuracy flat at 0.40 (0.50 - 0.03 is the lowest allowed) and the reward not rising
    lines, on_curve = R.check(fake_run(tmp_path / "flat", 7, {0: 0.40, 10: 0.40}, [0.5] * 10), reference)
    assert not on_curve and "OFF the expected curve" in lines[-1]
    assert [line.split()[-1] for line in lines[:-1]] == ["ok", "OUTSIDE", "ok", "OUTSIDE"]


def test_other_settings_are_named(reference, tmp_path):
    lines, _ = R.check(fake_run(tmp_path / "lr", 7, {0: 0.40, 10: 0.52}, [0.5] * 10, lr=0.001), reference)
    assert "settings differ" in lines[0] and "lr 0.001 (reference x)" in lines[0]


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="not a finished run folder"):
        R.check(tmp_path, {})


def test_the_shipped_curves_are_of_the_default_run():
    # a change of the default run's settings must come with new reference curves (record)
    shipped = json.loads(R.CURVES.read_text())
    defaults = vars(M.parse_args(["--algo", "grpo"]))
    assert {k: defaults[k] for k in R.SETTINGS} == shipped["settings"]
    assert len(shipped["seeds"]) >= 3 and "0" in shipped["accuracy"] and shipped["reward"]
