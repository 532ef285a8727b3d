"""The sweep's work queue (workspace/sweep.py queue, what make k8s-sweep's Job pods run) against the
real tracking server: pods racing for the same grid points run each exactly once, and a point whose
trial fails is said in one line and tried again, here or by another pod."""

import re
import subprocess
import sys
import threading
from collections import Counter

from mlflow.tracking import MlflowClient

from tests.support.helpers import WORKSPACE, run_python

GRID = ["--alphas", "0.1,0.5", "--l1-ratios", "0.2,0.8"]
NAMES = ["--experiment", "sweep-queue", "--registered-model", "sweep-queue"]


def test_claims_are_won_once_under_contention(tracking_server):
    from sweep import claim

    client = MlflowClient()
    run = client.create_run(client.create_experiment("claims-race")).info.run_id
    keys = [f"claim.race.{i}" for i in range(25)]
    winners = Counter()
    errors = []

    def contender(owner):
        try:
            for key in keys:
                if claim(MlflowClient(), run, key, owner):
                    winners[(key, owner)] += 1
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=contender, args=(f"pod-{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    params = client.get_run(run).data.params
    for key in keys:
        owners = [owner for (won, owner) in winners if won == key]
        assert owners == [params[key]], f"{key}: claimed by {owners}, param says {params.get(key)}"
    # The holder claiming again keeps it; another still cannot.
    assert claim(client, run, keys[0], params[keys[0]])
    assert not claim(client, run, keys[0], "someone-else")


def test_parallel_queue_workers_run_each_point_once(client_env):
    planned = run_python("sweep.py", "plan", *GRID, "--parallel", "3", *NAMES, env=client_env)
    assert planned.returncode == 0, planned.stderr
    study = re.search(r"^study: (\S+)$", planned.stdout, re.M).group(1)
    workers = [subprocess.Popen([sys.executable, "sweep.py", "queue", *GRID, "--run", "r1", *NAMES],
                                cwd=WORKSPACE, env=dict(client_env, HOSTNAME=f"pod-{n}"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for n in range(3)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0, 0], [err for _, err in outputs]
    ran = [int(re.search(r"ran (\d+) of the 4 points", out).group(1)) for out, _ in outputs]
    assert sum(ran) == 4, outputs

    import optuna
    from mlflow.optuna import MlflowStorage
    from optuna.trial import TrialState

    client = MlflowClient()
    experiment = client.get_experiment_by_name("sweep-queue").experiment_id
    loaded = optuna.load_study(study_name=study, storage=MlflowStorage(experiment_id=experiment))
    points = [(t.params["alpha"], t.params["l1_ratio"]) for t in loaded.get_trials() if t.state == TrialState.COMPLETE]
    assert sorted(points) == [(0.1, 0.2), (0.1, 0.8), (0.5, 0.2), (0.5, 0.8)]
    params = client.get_run(loaded._study_id).data.params
    claims = {k: v for k, v in params.items() if k.startswith("claim.r1.")}
    # One claim per point; a later attempt only where the one before it failed, and said so.
    # (Seen once under load: a trial failed, and the pod ran the point again.)
    failures = [line for _, err in outputs for line in err.splitlines() if "failed (attempt" in line]
    for key in claims:
        index, attempt = map(int, key.split(".")[2:])
        assert all(f"failed.r1.{index}.{a}" in params for a in range(attempt)), (key, failures)
    assert sorted({key.split(".")[2] for key in claims}) == [str(i) for i in range(4)]
    assert len(failures) == sum(1 for k in params if k.startswith("failed.r1.")), failures
    assert {owner.split(":")[0] for owner in claims.values()} <= {"pod-0", "pod-1", "pod-2"}

    # A retried pod of the same run, or a later run, finds nothing left to do.
    for run in ("r1", "r2"):
        again = run_python("sweep.py", "queue", *GRID, "--run", run, *NAMES, env=dict(client_env, HOSTNAME="late"))
        assert again.returncode == 0, again.stderr
        assert "ran 0 of the 4 points" in again.stdout


def test_queue_refuses_a_bad_run_name_in_one_line(client_env):
    result = run_python("sweep.py", "queue", *GRID, "--run", "bad name!", *NAMES, env=client_env)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "run must be" in result.stderr


# A worker whose evaluation (inside the trial's MLflow run) fails FAILS times, then works: the failure
# is one of the trial's own, as a tracking server hanging up mid-way would be.
FLAKY = """
import sys, sweep, train
real, calls = train.evaluate, []
def evaluate(*args, **kwargs):
    calls.append(1)
    if len(calls) <= FAILS:
        raise ConnectionError("the tracking server hung up")
    return real(*args, **kwargs)
train.evaluate = evaluate
sys.exit(sweep.main(sys.argv[1:]))
"""


def flaky_queue(fails, *args, env):
    return subprocess.run([sys.executable, "-c", FLAKY.replace("FAILS", str(fails)), "queue", *args], cwd=WORKSPACE,
                          env=dict(env, HOSTNAME="flaky"), capture_output=True, text=True, timeout=600)


def study_of(experiment, grid, client_env):
    planned = run_python("sweep.py", "plan", *grid, "--parallel", "1", "--experiment", experiment,
                         "--registered-model", experiment, env=client_env)
    assert planned.returncode == 0, planned.stderr
    import optuna
    from mlflow.optuna import MlflowStorage

    experiment_id = MlflowClient().get_experiment_by_name(experiment).experiment_id
    name = re.search(r"^study: (\S+)$", planned.stdout, re.M).group(1)
    return lambda: optuna.load_study(study_name=name, storage=MlflowStorage(experiment_id=experiment_id))


def test_a_failed_trial_says_why_and_its_point_is_tried_again(client_env):
    from optuna.trial import TrialState

    names = ["--experiment", "sweep-flaky", "--registered-model", "sweep-flaky"]
    load = study_of("sweep-flaky", GRID, client_env)
    result = flaky_queue(1, *GRID, "--run", "f1", *names, env=client_env)
    assert result.returncode == 0, result.stderr
    # The trial's own error, in one line (after Optuna's warning with its traceback, for the pod's log),
    # not Optuna's "Cannot tell a FAIL trial" in its place.
    failures = [line for line in result.stderr.splitlines() if "failed (attempt" in line]
    assert failures == ["sweep.py: alpha=0.1 l1_ratio=0.2 failed (attempt 1 of 3): "
                        "ConnectionError: the tracking server hung up"], result.stderr
    assert "Cannot tell" not in result.stderr
    assert "ran 4 of the 4 points" in result.stdout
    study = load()
    states = Counter(t.state for t in study.get_trials())
    assert states == {TrialState.COMPLETE: 4, TrialState.FAIL: 1}
    params = MlflowClient().get_run(study._study_id).data.params
    assert {k for k in params if k.startswith(("claim.f1.", "failed.f1."))} == {
        "claim.f1.0.0", "failed.f1.0.0", "claim.f1.0.1", "claim.f1.1.0", "claim.f1.2.0", "claim.f1.3.0"}


def test_a_point_failing_every_attempt_fails_the_pod_in_one_line(client_env):
    grid = ["--alphas", "0.3", "--l1-ratios", "0.4"]
    names = ["--experiment", "sweep-broken", "--registered-model", "sweep-broken"]
    study_of("sweep-broken", grid, client_env)
    result = flaky_queue(99, *grid, "--run", "b1", *names, env=client_env)
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if "failed (attempt" in line] == [
        f"sweep.py: alpha=0.3 l1_ratio=0.4 failed (attempt {n} of 3): ConnectionError: the tracking server hung up"
        for n in (1, 2, 3)]
    errors = [line for line in result.stderr.splitlines() if line.startswith("sweep.py: error:")]
    assert len(errors) == 1 and "1 grid points failed 3 times" in errors[0], result.stderr
    # The Job's retry pod of that run does not try it a fourth time, and says so.
    again = run_python("sweep.py", "queue", *grid, "--run", "b1", *names, env=dict(client_env, HOSTNAME="retry"))
    assert again.returncode != 0 and "ran 0 of the 1 points" in again.stdout


def test_a_retried_pod_takes_over_a_failed_attempt_and_leaves_a_held_claim(client_env):
    from optuna.trial import TrialState

    names = ["--experiment", "sweep-takeover", "--registered-model", "sweep-takeover"]
    load = study_of("sweep-takeover", GRID, client_env)
    study_run = load()._study_id
    client = MlflowClient()
    # Point 0: its pod failed its first attempt and died. Point 1: another pod holds it, still running.
    client.log_param(study_run, "claim.t1.0.0", "dead-pod:1")
    client.log_param(study_run, "failed.t1.0.0", "dead-pod:1")
    client.log_param(study_run, "claim.t1.1.0", "busy-pod:1")
    result = run_python("sweep.py", "queue", *GRID, "--run", "t1", *names, env=dict(client_env, HOSTNAME="retry"))
    assert result.returncode == 0, result.stderr
    assert "ran 3 of the 4 points" in result.stdout
    params = client.get_run(study_run).data.params
    assert params["claim.t1.0.1"].startswith("retry:") and "claim.t1.1.1" not in params
    points = sorted((t.params["alpha"], t.params["l1_ratio"]) for t in load().get_trials()
                    if t.state == TrialState.COMPLETE)
    assert points == [(0.1, 0.2), (0.5, 0.2), (0.5, 0.8)]
