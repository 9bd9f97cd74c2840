"""What a user can do wrong, or what can happen to a run, as real processes: bad flags, bad data files, run folders
that cannot be written or hold a run already, damaged checkpoints, Ctrl-C, concurrent runs and kill -9. Each ends in
one line naming the flag, file or line (a non-zero status, no traceback), or carries on correctly."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a default run made small: the default model and algorithm, few questions, a short warm-up, short answers
SMALL = ["--n-train", "32", "--n-test", "8", "--sft-steps", "20", "--sft-batch", "8", "--prompts-per-step", "4",
         "--group-size", "4", "--max-new-tokens", "16", "--eval-every", "100", "--no-sft-baseline"]
GSM8K = {"question": "Ann has 3 bags of 4 apples. How many apples?", "answer": "3*4=12\n#### 12"}


def command(*args):
    return [sys.executable, str(ROOT / "minireason.py"), *map(str, args)]


def environment(cache):
    return dict(os.environ, MINIREASON_CACHE=str(cache), HF_HUB_OFFLINE="1")


def minireason(*args, cache, timeout=300):
    return subprocess.run(command(*args), capture_output=True, text=True, env=environment(cache), timeout=timeout)


def start(*args, cache, log):
    """minireason in the background, its stdout and stderr going to the file `log`."""
    with open(log, "w") as file:
        return subprocess.Popen(command(*args), stdout=file, stderr=subprocess.STDOUT, text=True,
                                env=environment(cache))


def wait_for(log, text, process, seconds=240):
    """Wait until `text` appears in the file `log` (while `process` runs)."""
    deadline = time.time() + seconds
    while text not in log.read_text():
        assert process.poll() is None, f"ended before {text!r}:\n{log.read_text()[-2000:]}"
        assert time.time() < deadline, f"no {text!r} after {seconds} s"
        time.sleep(0.05)


def one_line_error(result, status, message):
    """The process ended with `status` and its last line of stderr starts with `message`, with no traceback."""
    assert result.returncode == status, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert message in last, last


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "0"], "--temperature 0: training samples"),
    (["--temperature", "nan"], "argument --temperature: must be a finite number, got nan"),
    (["--lr", "inf"], "argument --lr: must be a finite number, got inf"),
    (["--lr", "nan"], "argument --lr: must be a finite number, got nan"),
    (["--kl-coef", "nan"], "argument --kl-coef: must be a finite number, got nan"),
    (["--top-p", "2"], "argument --top-p: must be above 0.0 and at most 1.0, got 2"),
    (["--top-p", "0"], "argument --top-p: must be above 0.0 and at most 1.0, got 0"),
    (["--group-size", "1"], "--group-size 1: --algo grpo needs groups of 2 or more"),
    (["--algo", "dpo", "--group-size", "1"], "--group-size 1: --algo dpo needs groups of 2 or more"),
    (["--algo", "reinforce_rej", "--group-size", "1"], "--group-size 1: --algo reinforce_rej needs groups of 2"),
])
def test_a_bad_flag_is_one_line_from_the_parser(tmp_path, flags, message):
    result = minireason(*flags, "--out", tmp_path / "run", cache=tmp_path / "cache", timeout=60)
    one_line_error(result, 2, message)
    assert not (tmp_path / "cache").exists()


def test_group_size_1_is_fine_where_no_group_is_needed():
    import minireason as M
    for algo in ("raft", "raftpp", "reinforce", "ppo", "sft"):
        assert M.parse_args(["--algo", algo, "--group-size", "1"]).group_size == 1


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.mark.parametrize("records, message", [
    ([GSM8K] * 5, "data.jsonl: 5 records, and --n-test 500 of them are held out, leaving none to train on"),
    ([GSM8K, "[" * 100_000], "data.jsonl:2: not valid JSON for a record (nested too deeply)"),
    ([GSM8K, GSM8K, {"question": "x" * 10_000_000, "answer": "#### 1"}],
     "data.jsonl:3: longer than the 100,000 characters a line may have"),
    ([{"question": "x" * 30_000, "answer": "#### 1"}], "data.jsonl:1: field 'question' has 30,000 characters"),
    ([GSM8K, {"question": "What?", "answer": "y" * 30_000 + "#### 1"}], "data.jsonl:2: field 'answer' has 30,006"),
])
def test_a_bad_data_file_is_one_line_with_its_line_number(tmp_path, records, message):
    data = write_jsonl(tmp_path / "data.jsonl", records)
    result = minireason("--data", data, "--out", tmp_path / "run", cache=tmp_path / "cache", timeout=60)
    one_line_error(result, 1, message)
    assert not (tmp_path / "cache").exists()  # refused before any model was built


def test_an_unusable_out_is_refused_before_anything_slow(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = minireason("--out", tmp_path / "a-file", cache=tmp_path / "cache", timeout=60)
    one_line_error(result, 1, f"--out {tmp_path / 'a-file'}: a file is there, not a folder; choose another --out")
    result = minireason("--out", tmp_path / "a-file" / "run", cache=tmp_path / "cache", timeout=60)
    one_line_error(result, 1, f"--out {tmp_path / 'a-file' / 'run'}: cannot write there (Not a directory)")
    assert not (tmp_path / "cache").exists()


def test_a_read_only_out_is_refused_before_anything_slow(tmp_path):
    # a read-only file system of its own, in a private mount namespace (where the system allows one)
    (tmp_path / "ro").mkdir()
    script = (f"mount -t tmpfs -o ro tmpfs {tmp_path / 'ro'} && "
              f"exec {shlex.join(command('--out', tmp_path / 'ro' / 'run'))}")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                            env=environment(tmp_path / "cache"), timeout=60)
    if "mount" in result.stderr or "unshare" in result.stderr:
        pytest.skip(f"no private read-only mount here: {result.stderr.strip()}")
    one_line_error(result, 1, f"--out {tmp_path / 'ro' / 'run'}: cannot write there (Read-only file system)")
    assert not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A small default run that saved a checkpoint at its end, and its cache (with the warm-up)."""
    root = tmp_path_factory.mktemp("finished")
    result = minireason(*SMALL, "--steps", "1", "--save-every", "1", "--out", root / "run", cache=root / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", root / "cache"


def test_a_second_run_into_the_same_out_is_refused(finished_run):
    run_dir, cache = finished_run
    before = (run_dir / "metrics.jsonl").read_text()
    result = minireason(*SMALL, "--steps", "1", "--out", run_dir, cache=cache, timeout=60)
    one_line_error(result, 1, f"--out {run_dir}: an earlier run's {run_dir / 'metrics.jsonl'} is there; choose "
                              f"another --out (or, to continue a training run there, pass --resume {run_dir})")
    assert (run_dir / "metrics.jsonl").read_text() == before


def damaged_copy(run_dir, tmp_path, damage):
    copy = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(run_dir), str(copy)], check=True)
    damage(copy)
    return copy


def truncate(path, size):
    os.truncate(path, size)


def without(keys):
    def damage(run_dir):
        config = json.loads((run_dir / "config.json").read_text())
        (run_dir / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in keys}))
    return damage


@pytest.mark.parametrize("damage, message", [
    (lambda d: truncate(d / "checkpoint-1" / "model.safetensors", 100_000),
     "checkpoint-1/model.safetensors is missing or damaged (Error while deserializing header"),
    (lambda d: truncate(d / "checkpoint-1" / "trainer_state.pt", 1000), "checkpoint-1/trainer_state.pt is missing or "
                                                                        "damaged"),
    (lambda d: (d / "checkpoint-1" / "trainer_state.pt").write_text("garbage"),
     "checkpoint-1/trainer_state.pt is missing or damaged"),
    (lambda d: (d / "metrics.jsonl").unlink(), "metrics.jsonl is missing or damaged (No such file or directory"),
    (lambda d: (d / "metrics.jsonl").write_text("{}\n"), "metrics.jsonl has 1 lines, fewer than the 2 logged before "
                                                         "checkpoint-1"),
    (without({"algo", "lr"}), "config.json lacks algo, lr (written by another version of minireason, or edited)"),
    (lambda d: (d / "config.json").write_text("[1, 2"), "config.json is missing or damaged"),
    (lambda d: (d / "latest").write_text("checkpoint-7"), "checkpoint-7/config.json is missing or damaged"),
    (lambda d: (d / "latest").write_text("../.."), "latest names '../..', not a checkpoint-<step> folder"),
])
def test_a_damaged_run_folder_is_named_when_resumed(finished_run, tmp_path, damage, message):
    run_dir = damaged_copy(finished_run[0], tmp_path, damage)
    result = minireason("--resume", run_dir, "--steps", "2", cache=finished_run[1], timeout=60)
    one_line_error(result, 1, f"--resume {run_dir}: ")
    assert message in result.stderr.strip().splitlines()[-1]


def test_a_hand_edited_latest_with_a_newline_resumes(finished_run, tmp_path):
    run_dir = damaged_copy(finished_run[0], tmp_path, lambda d: (d / "latest").write_text("checkpoint-1\n"))
    result = minireason("--resume", run_dir, "--steps", "2", "--save-every", "1", cache=finished_run[1])
    assert result.returncode == 0, result.stderr[-3000:]
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert (run_dir / "latest").read_text() == "checkpoint-2"  # and the finished run's model/ was replaced
    assert not list(run_dir.glob("model.*"))


def test_ctrl_c_saves_exits_130_and_prints_a_resume_command_that_pastes(finished_run, tmp_path):
    out = tmp_path / "a run folder with spaces"
    log = tmp_path / "log.txt"
    process = start(*SMALL, "--steps", "50", "--out", out, cache=finished_run[1], log=log)
    wait_for(log, "grpo:", process)  # the RL loop has started
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    printed = log.read_text()
    assert "Traceback" not in printed
    resume = printed.strip().splitlines()[-1].split("continue with: ")[1]
    assert resume == f"python minireason.py --resume '{out}'"
    args = shlex.split(resume)[2:]  # what a user pastes, after `python minireason.py`
    result = minireason(*args, "--steps", str(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"]
                                               + 1), cache=finished_run[1])
    assert result.returncode == 0, result.stderr[-3000:]


def test_concurrent_runs_from_an_empty_cache_build_the_warm_up_once(tmp_path):
    cache = tmp_path / "cache"
    runs = [start(*SMALL, "--steps", "1", "--out", tmp_path / f"run{i}", cache=cache, log=tmp_path / f"log{i}.txt")
            for i in range(2)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0], [(tmp_path / f"log{i}.txt").read_text()[-2000:]
                                                               for i in range(2)]
    logs = [(tmp_path / f"log{i}.txt").read_text() for i in range(2)]
    assert sum("warm-up (SFT):" in log for log in logs) == 1  # one trained it, the other waited and reused it
    assert any("waiting for another run to finish building" in log for log in logs)
    assert len(list(cache.glob("warmup-*"))) == 1 and not list(cache.glob("*.tmp*"))


def test_kill_9_during_the_warm_up_leaves_nothing_a_later_run_takes_for_whole(tmp_path):
    cache, log = tmp_path / "cache", tmp_path / "log.txt"
    process = start(*SMALL, "--steps", "1", "--out", tmp_path / "killed", cache=cache, log=log)
    wait_for(log, "warm-up (SFT):", process)  # the tiny model is built, the warm-up trains under its lock
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not list(cache.glob("warmup-*"))
    result = minireason(*SMALL, "--steps", "1", "--out", tmp_path / "again", cache=cache)  # the lock died with it
    assert result.returncode == 0, result.stderr[-3000:]
    assert "waiting for another run" not in result.stderr and "warm-up (SFT):" in result.stderr


def test_a_build_killed_half_way_is_never_taken_for_whole_and_its_leftovers_go(tmp_path):
    # a process killed (SIGKILL, by itself) half-way through writing a cache entry, and one still writing another
    build = ("import os, sys; sys.path.insert(0, sys.argv[1]); from algorithms import models; "
             "models.cached(sys.argv[2], lambda folder: (folder.mkdir(), (folder / 'config.json').write_text('{'), "
             "os.kill(os.getpid(), 9)))")
    killed = subprocess.run([sys.executable, "-c", build, str(ROOT), str(tmp_path / "cache" / "tiny-x")])
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "cache" / "tiny-x").exists() and list((tmp_path / "cache").glob("tiny-x.tmp*"))
    writing = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path / "cache" / f"warmup-y.tmp{writing.pid}").mkdir()
    try:
        from algorithms import models
        built = models.cached(tmp_path / "cache" / "tiny-x", lambda folder: folder.mkdir())
    finally:
        writing.kill()
    assert Path(built).is_dir() and not list((tmp_path / "cache").glob("tiny-x.tmp*"))
    assert (tmp_path / "cache" / f"warmup-y.tmp{writing.pid}").exists()  # its writer is alive: left alone


def test_an_unreachable_hub_is_one_line_in_seconds(tmp_path):
    env = dict(os.environ, MINIREASON_CACHE=str(tmp_path / "cache"), HF_ENDPOINT="http://127.0.0.1:9")  # closed
    env.pop("HF_HUB_OFFLINE", None)
    start_time = time.time()
    result = subprocess.run(command("--model", "no-such-org/no-such-model", "--eval-only", "--out", tmp_path / "e"),
                            capture_output=True, text=True, env=env, timeout=120)
    one_line_error(result, 1, "--model no-such-org/no-such-model: not a checkpoint folder here, and the Hugging Face "
                              "hub could not provide it")
    assert time.time() - start_time < 30  # the hub client's retries alone take ~50 s


def test_the_tiny_model_runs_on_one_thread_unless_told(tmp_path):
    # beside a busy process, a thread per core makes every small op wait for the thread put off its core
    import torch

    import minireason as M
    threads = torch.get_num_threads()
    data = write_jsonl(tmp_path / "data.jsonl", [GSM8K] * 2)
    try:
        for flags, expected in (([], 1), (["--threads", "2"], 2)):
            M.main(["--eval-only", "--data", str(data), "--max-new-tokens", "4", "--cache-dir", str(tmp_path / "cache"),
                    "--out", str(tmp_path / f"eval{expected}"), *flags])
            assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(threads)
