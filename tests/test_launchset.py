"""The set's record (resnet.launchset) through its verbs, as run_and_time.sh calls them: a stopped set is continued
with its recorded seeds, another set's settings are refused in one line, an ended set makes way for a new one,
and the stop line says what the checkpoint folder really holds. The trainer's part is played by writing the
log lines it would write; tests/test_run_and_time.py runs the same through the launcher and the trainer."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--epochs", "2", "--data", "/d", "--resume", "auto"]


def verb(*args, env=None):
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-m", "resnet.launch", *map(str, args)], capture_output=True,
                          cwd=REPO, env={**clean, **(env or {})}, timeout=120)


def plan(record: Path, env: dict, flags=FLAGS) -> list[tuple[int, int]]:
    out = verb("begin", "--record", record, "--", *flags, env=env)
    assert out.returncode == 0, out.stderr.decode()
    return [tuple(map(int, r.split()[1:])) for r in out.stdout.decode().split("\0") if r], out.stderr.decode()


def run_one(record: Path, results: Path, index: int, status: int, stop="success") -> Path:
    """What one experiment does to the record: claim its log, write it (as the trainer), record its end."""
    claimed = verb("claim", "--record", record, "--index", index, results)
    assert claimed.returncode == 0, claimed.stderr.decode()
    log = Path(claimed.stdout.decode().strip())
    log.write_text(f':::MLLOG {{"key": "run_stop", "value": null, "metadata": {{"status": "{stop}"}}}}\n')
    ended = verb("record", "--record", record, "--index", index, "--status", status, "--seconds", 1, "--log", log)
    assert ended.returncode == 0, ended.stderr.decode()
    return log


def test_a_stopped_set_continues_with_its_seeds_and_the_aborted_log_does_not_count(tmp_path):
    results, env = tmp_path / "results", {"NEXP": "3"}
    results.mkdir()
    record = results / "set.json"
    first, _ = plan(record, env)
    assert [i for i, _ in first] == [0, 1, 2] and len({s for _, s in first}) == 3, "fresh random seeds"
    run_one(record, results, 0, 0)
    run_one(record, results, 1, 4, stop="aborted")            # stopped by a signal in experiment 2
    stop = verb("stopped", "--record", record, "--index", 1, "--signal", "TERM", results)
    line = stop.stderr.decode()
    assert "stopped by SIGTERM after 2 of 3 experiments" in line
    assert f"the interrupted run is logged as aborted in {results / 'result_1.txt'}" in line
    assert "no checkpoint (CHECKPOINT_DIR is not set): the same command again starts it over" in line
    assert "1 not started" in line and "run the same command again to continue it" not in line
    (tmp_path / "ckpt").mkdir()
    stop = verb("stopped", "--record", record, "--index", 1, "--signal", "TERM", results,
                env={"CHECKPOINT_DIR": str(tmp_path / "ckpt")})
    assert "no checkpoint of it was written" in stop.stderr.decode() and "continue it" not in stop.stderr.decode()

    again, said = plan(record, env)
    assert again == first[1:], "the interrupted experiment with its seed, then the one not started"
    assert "continuing the set recorded in" in said and "1 of 3 experiments ended" in said
    assert "result_1.txt will not count" in said
    run_one(record, results, 1, 0)
    run_one(record, results, 2, 2)
    saved = json.loads(record.read_text())
    assert saved["not_counted"] == ["result_1.txt"]
    assert [e["logs"] for e in saved["experiments"]] == [["result_0.txt"], ["result_1.txt", "result_2.txt"],
                                                         ["result_3.txt"]]
    assert [e["exit"] for e in saved["experiments"]] == [0, 0, 2]
    assert [e["seed"] for e in saved["experiments"]] == [s for _, s in first]


def test_another_sets_settings_are_refused_and_an_ended_set_makes_way(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    record = results / "set.json"
    plan(record, {"NEXP": "2", "SEED": "7"})
    run_one(record, results, 0, 0)
    before = record.read_bytes()
    for env, flags, why in [({"NEXP": "3", "SEED": "7"}, FLAGS, "NEXP is 3 here but 2 there"),
                            ({"NEXP": "2", "SEED": "8"}, FLAGS, "SEED is 8 here but 7 there"),
                            ({"NEXP": "2"}, ["--epochs", "3", "--data", "/d"], "--epochs is 3 here but 2 there")]:
        out = verb("begin", "--record", record, "--", *flags, env=env)
        (line,) = out.stderr.decode().splitlines()
        assert out.returncode == 1 and out.stdout == b"", line
        assert line.startswith(f"mlperf-resnet: error: {record}: records an unfinished set") and why in line, line
        assert record.read_bytes() == before, "a refused launch changed the record"
    # RESUME (a run setting) may change on the re-run
    assert plan(record, {"NEXP": "2", "SEED": "7"}, FLAGS[:4] + ["--resume", "1"])[0] == [(1, 8)]
    run_one(record, results, 1, 0)
    new, said = plan(record, {"NEXP": "2", "SEED": "7"})
    assert new == [(0, 7), (1, 8)] and "has ended; a new set starts" in said
    assert json.loads((results / "set_0.json").read_text())["experiments"][1]["logs"] == ["result_1.txt"]


def test_a_dry_run_reads_the_record_and_writes_nothing(tmp_path):
    record = tmp_path / "results" / "set.json"
    out = verb("begin", "--dry-run", "--record", record, "--", *FLAGS, env={"NEXP": "2", "SEED": "3"})
    assert out.returncode == 0 and out.stdout.decode().split("\0")[:2] == ["run 0 3", "run 1 4"]
    assert not (tmp_path / "results").exists()


def test_an_unreadable_record_is_one_line(tmp_path):
    record = tmp_path / "set.json"
    record.write_text("{not json")
    out = verb("begin", "--record", record, "--", *FLAGS, env={"NEXP": "2"})
    assert out.returncode == 1 and out.stderr.decode() == (
        f"mlperf-resnet: error: {record}: not a readable set record (JSONDecodeError); move it away to start a new "
        "set in this LOGDIR\n")


def test_one_call_per_experiment_runs_only_what_is_left(tmp_path):
    """As run_with_docker.sh and run.sub call run_and_time.sh (the set's NEXP and SEED, EXPERIMENT_INDEX=i a call): a
    pass stopped in experiment 2, then the same command: the call of index 0 says what it does and skips experiment
    1, the next continues experiment 2 with its seed, the last runs experiment 3; each call's verdict is its
    experiment's until the last, and a set that ends within the pass is not taken for an ended one."""
    results, env = tmp_path / "results", {"NEXP": "3", "SEED": "20"}
    results.mkdir()
    record = results / "set.json"

    def at(i):
        return {**env, "EXPERIMENT_INDEX": str(i)}
    assert plan(record, at(0)) == ([(0, 20)], "")
    run_one(record, results, 0, 0)
    assert plan(record, at(1)) == ([(1, 21)], "")
    run_one(record, results, 1, 4, stop="aborted")

    skipped, said = plan(record, at(0))
    assert skipped == [] and len(said.splitlines()) == 2, said
    assert "continuing the set recorded in" in said and "1 of 3 experiments ended" in said
    assert "experiment 1/3 (seed 20) ended in an earlier launch (result_0.txt): skipped" in said
    assert verb("verdict", "--record", record, results, env=at(0)).returncode == 0
    assert plan(record, at(1)) == ([(1, 21)], "")
    run_one(record, results, 1, 2)
    assert verb("verdict", "--record", record, results, env=at(1)).returncode == 1, "it missed the target"
    assert plan(record, at(2)) == ([(2, 22)], "")
    run_one(record, results, 2, 0)
    saved = json.loads(record.read_text())
    assert saved["not_counted"] == ["result_1.txt"]
    assert [e["logs"] for e in saved["experiments"]] == [["result_0.txt"], ["result_1.txt", "result_2.txt"],
                                                         ["result_3.txt"]]
    again, said = plan(record, at(2))            # the set ended in this pass: nothing to run, nothing archived
    assert again == [] and "has ended" not in said and not (results / "set_0.json").exists()


def test_an_experiment_index_outside_the_set_is_one_line(tmp_path):
    out = verb("prepare", env={"DGXSYSTEM": "CPU", "NEXP": "2", "EXPERIMENT_INDEX": "2", "DATADIR": str(tmp_path),
                               "LOGDIR": str(tmp_path)})
    assert out.returncode == 1 and out.stdout == b""
    assert out.stderr.decode() == ("mlperf-resnet: error: EXPERIMENT_INDEX=2 is not below NEXP=2 (the set's size); fix "
                                   "or unset EXPERIMENT_INDEX\n")


def test_a_node_of_a_set_with_random_seeds_takes_node_zeros_draw(tmp_path):
    """Without SEED a node > 0 waits (up to RDZV_TIMEOUT_S) for node 0's record of the set and runs its seeds."""
    results = tmp_path / "results"
    results.mkdir()
    shared, env = results / "set.json", {"NEXP": "2", "EXPERIMENT_INDEX": "0", "RDZV_TIMEOUT_S": "1"}
    alone = verb("begin", "--record", tmp_path / "node1.json", "--shared", shared, "--", *FLAGS, env=env)
    assert alone.returncode == 1 and alone.stderr.decode() == (
        f"mlperf-resnet: error: {shared}: node 0 recorded no set within RDZV_TIMEOUT_S; see node 0's console for "
        "why (or set SEED, so that every node knows the seeds)\n")
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH")}
    node1 = subprocess.Popen([sys.executable, "-m", "resnet.launch", "begin", "--record", tmp_path / "node1.json",
                              "--shared", shared, "--", *FLAGS], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env={**clean, **env, "RDZV_TIMEOUT_S": "300"})
    node0, _ = plan(shared, env)
    out, err = node1.communicate(timeout=300)
    assert node1.returncode == 0, err.decode()
    assert [tuple(map(int, r.split()[1:])) for r in out.decode().split("\0") if r] == node0 == node0[:1]


def test_a_node_runs_the_new_set_that_node_0_starts_after_an_ended_one(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    shared, env = results / "set.json", {"NEXP": "1", "SEED": "9"}
    plan(shared, env)
    run_one(shared, results, 0, 0)          # node 0's set has ended: the next launch starts a new one
    out = verb("begin", "--record", tmp_path / "node1.json", "--shared", shared, "--", *FLAGS,
               env={**env, "EXPERIMENT_INDEX": "0"})
    assert out.returncode == 0 and out.stdout.decode().split("\0")[:1] == ["run 0 9"], out.stderr.decode()
