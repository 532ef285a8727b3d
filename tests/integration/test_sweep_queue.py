"""The sweep's work queue (workspace/sweep.py queue, what make k8s-sweep's Job pods run) against the
real tracking server: pods racing for the same grid points run each exactly once."""

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
    claims = {k: v for k, v in client.get_run(loaded._study_id).data.params.items() if k.startswith("claim.r1.")}
    assert sorted(claims) == [f"claim.r1.{i}" for i in range(4)]
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
