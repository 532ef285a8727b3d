"""A grid search over alpha x l1_ratio, run by Optuna with its study kept in the tracking server
(mlflow.optuna.MlflowStorage: the study is a parent run, each trial a child run with its metrics and
registered model). `make sweep` drives it in three steps:

    python sweep.py plan --alphas 0.01,0.1 --l1-ratios 0.1,0.9 --parallel 2   # validate, create or
        # resume the study, mark trials of dead workers failed; print "study: NAME", then
        # "points: [...]" for each worker
    python sweep.py work --study NAME --points '[[0.01, 0.1], [0.1, 0.9]]'     # one worker container
    python sweep.py report --study NAME [--promote]                            # table by rmse

`make k8s-sweep` runs `plan` once (a Helm hook Job), then PARALLEL pods of one Kubernetes Job, each
running `python sweep.py queue --run RUN [--alphas ...] [--l1-ratios ...]`: a pod has no share of
its own (Kubernetes 1.20 has no indexed Jobs), so each claims the missing points one at a time, in
the tracking server, until none is left. A claim is a param of the study's run,
`claim.RUN.<i>.<attempt>`, whose value names the pod: MLflow refuses to change a logged param, so of
two pods claiming the same point, exactly one succeeds (the database's key decides), and a retried
pod of the same run (a new name) does not run a point twice. A pod whose trial fails says why, marks
that attempt failed (`failed.RUN.<i>.<attempt>`) and claims the point's next attempt, up to
ATTEMPTS; a pod seeing a failed attempt's mark may take the next one too.

Every grid point runs exactly once: `plan` hands each missing point to one worker, which fixes the
trial's parameters (Optuna's PartialFixedSampler over the GridSampler), rather than letting parallel
GridSamplers pick, which can pick the same point twice. Re-running a sweep completes what is missing.
"""

import hashlib
import json
import math
import sys

from train import DEFAULT_NAME, EXIT_FAILURE, OneLineParser, check_tracking_server, log_training, train_model

DEFAULT_ALPHAS = (0.0001, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0)
DEFAULT_L1_RATIOS = (0.1, 0.5, 0.9)
MAX_PARALLEL = 64
MAX_POINTS = 1000
ATTEMPTS = 3  # tries of one grid point in `queue`, across the pods of one run


def parse_values(parser, name, raw, low, high):
    """Comma-separated distinct finite numbers within [low, high], or a one-line usage error."""
    values = []
    for item in raw.split(","):
        try:
            value = float(item)
        except ValueError:
            parser.error(f"{name} must be comma-separated numbers, got {item.strip()!r} in {raw!r}")
        if not (math.isfinite(value) and low <= value <= high):
            parser.error(f"{name} values must be between {low:g} and {high:g}, got {item.strip()!r}")
        if value in values:
            parser.error(f"{name} lists {item.strip()} twice")
        values.append(value)
    return values


def grid_of(alphas, l1_ratios):
    return [(alpha, l1_ratio) for alpha in alphas for l1_ratio in l1_ratios]


def study_name(alphas, l1_ratios):
    """The same grid always means the same study, so a re-run resumes it."""
    key = json.dumps([sorted(alphas), sorted(l1_ratios)])
    return f"sweep-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def shares(points, parallel):
    """points dealt round-robin to at most `parallel` workers (no empty share)."""
    return [share for share in (points[i::parallel] for i in range(parallel)) if share]


def parse_args(argv=None):
    parser = OneLineParser(prog="sweep.py", description="Grid search over alpha x l1_ratio with Optuna.")
    steps = parser.add_subparsers(dest="step", required=True, parser_class=OneLineParser)
    plan = steps.add_parser("plan")
    plan.add_argument("--alphas", default=",".join(map(str, DEFAULT_ALPHAS)))
    plan.add_argument("--l1-ratios", default=",".join(map(str, DEFAULT_L1_RATIOS)))
    plan.add_argument("--parallel", default="1")
    work = steps.add_parser("work")
    work.add_argument("--study", required=True)
    work.add_argument("--points", required=True, help="JSON list of [alpha, l1_ratio]")
    queue = steps.add_parser("queue")
    queue.add_argument("--alphas", default=",".join(map(str, DEFAULT_ALPHAS)))
    queue.add_argument("--l1-ratios", default=",".join(map(str, DEFAULT_L1_RATIOS)))
    queue.add_argument("--run", required=True, help="names this sweep's claims (one per make k8s-sweep)")
    report = steps.add_parser("report")
    report.add_argument("--study", required=True)
    report.add_argument("--promote", action="store_true", help="then move @champion to the best version")
    for step in (plan, work, queue, report):
        step.add_argument("--experiment", default=DEFAULT_NAME)
        step.add_argument("--registered-model", default=DEFAULT_NAME)
    args = parser.parse_args(argv)
    if args.step == "queue":
        args.alphas = parse_values(queue, "alphas", args.alphas, 0, 1e6)
        args.l1_ratios = parse_values(queue, "l1-ratios", args.l1_ratios, 0, 1)
        if not all(c.isalnum() or c in "-_." for c in args.run) or not 0 < len(args.run) <= 64:
            queue.error(f"run must be 1-64 letters, digits, '-', '_' or '.', got {args.run!r}")
    if args.step == "plan":
        args.alphas = parse_values(plan, "alphas", args.alphas, 0, 1e6)
        args.l1_ratios = parse_values(plan, "l1-ratios", args.l1_ratios, 0, 1)
        if not (args.parallel.isdigit() and 1 <= int(args.parallel) <= MAX_PARALLEL):
            plan.error(f"parallel must be a whole number from 1 to {MAX_PARALLEL}, got {args.parallel!r}")
        args.parallel = int(args.parallel)
        if len(args.alphas) * len(args.l1_ratios) > MAX_POINTS:
            plan.error(f"the grid has {len(args.alphas) * len(args.l1_ratios)} points; at most {MAX_POINTS}")
    return args


def open_study(experiment, name, grid=None):
    """The Optuna study `name`, kept in the tracking server; created when grid is given."""
    import mlflow
    import optuna
    from mlflow.optuna import MlflowStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = MlflowStorage(experiment_id=mlflow.set_experiment(experiment).experiment_id)
    if grid is None:
        return optuna.load_study(study_name=name, storage=storage), storage
    alphas, l1_ratios = sorted({a for a, _ in grid}), sorted({ratio for _, ratio in grid})
    sampler = optuna.samplers.GridSampler({"alpha": alphas, "l1_ratio": l1_ratios})
    # MlflowStorage creates a new study run for every create_study, even of a name that exists
    # (load_if_exists has no effect there): look for the study first.
    if storage.get_study_id_by_name_if_exists(name):
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler), storage
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize", sampler=sampler)
    study.set_user_attr("grid", [alphas, l1_ratios])
    storage.flush_all_batches()
    return study, storage


def completed_points(study):
    from optuna.trial import TrialState
    return {(t.params["alpha"], t.params["l1_ratio"]) for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE}


def plan(args):
    from optuna.trial import TrialState
    grid = grid_of(args.alphas, args.l1_ratios)
    name = study_name(args.alphas, args.l1_ratios)
    study, storage = open_study(args.experiment, name, grid)
    # `make sweep` runs one sweep at a time: a trial still RUNNING belongs to a worker that died.
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    done = completed_points(study)
    missing = [point for point in grid if point not in done]
    print(f"study {name}: {len(grid)} points, {len(done)} done, {len(missing)} to run", file=sys.stderr)
    # For tools/sweep, prefixed: MLflow prints lines of its own here (a run's URL when it ends).
    print(f"study: {name}")
    for share in shares(missing, args.parallel):
        print(f"points: {json.dumps(share)}")
    return 0


def claim(client, study_run, key, owner):
    """True when this owner holds the claim `key` (now, or from before); False when another does."""
    from mlflow.exceptions import MlflowException

    try:
        client.log_param(study_run, key, owner)
        return True
    except MlflowException as error:
        if "Changing param values is not allowed" in str(error):
            return False
        raise


def queue(args):
    import os
    import socket

    from mlflow.tracking import MlflowClient

    name = study_name(args.alphas, args.l1_ratios)
    study, storage = open_study(args.experiment, name)
    grid = grid_of(args.alphas, args.l1_ratios)
    done = completed_points(study)
    owner = f"{os.environ.get('HOSTNAME') or socket.gethostname()}:{os.getpid()}"
    client = MlflowClient()
    ran, given_up = 0, []
    for index, point in enumerate(grid):
        if tuple(point) in done:
            continue
        outcome = run_claimed(args, client, study, storage, owner, index, point)
        ran += outcome == "ran"
        if outcome == "gave up":
            given_up.append(point)
    print(f"queue: {owner} ran {ran} of the {len(grid)} points of study {name}; none is left to claim", flush=True)
    if given_up:
        print(f"sweep.py: error: {len(given_up)} grid points failed {ATTEMPTS} times ({given_up}): see the "
              "errors above; make k8s-sweep again runs what is missing", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def run_claimed(args, client, study, storage, owner, index, point):
    """Claims and runs one grid point: "ran", "taken" (another pod holds it) or "gave up" (its
    last attempt failed here). A failed attempt is marked, so this pod or another takes the next."""
    for attempt in range(ATTEMPTS):
        if not claim(client, study._study_id, f"claim.{args.run}.{index}.{attempt}", owner):
            if f"failed.{args.run}.{index}.{attempt}" in client.get_run(study._study_id).data.params:
                continue  # that try failed: the next attempt is free to claim
            return "taken"
        try:
            run_points(args, study, storage, [point])
            return "ran"
        except Exception as error:  # noqa: BLE001 - said in one line, then the point is tried again
            print(f"sweep.py: alpha={point[0]:g} l1_ratio={point[1]:g} failed (attempt {attempt + 1} of "
                  f"{ATTEMPTS}): {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            client.log_param(study._study_id, f"failed.{args.run}.{index}.{attempt}", owner)
    return "gave up"


def work(args):
    study, storage = open_study(args.experiment, args.study)
    run_points(args, study, storage, json.loads(args.points))
    return 0


def run_points(args, study, storage, points):
    """Runs each [alpha, l1_ratio] of points as one trial of the study (its parameters fixed)."""
    import optuna
    from mlflow.tracking import MlflowClient
    from wine_data import load_wine_data

    alphas, l1_ratios = study.user_attrs["grid"]
    data = load_wine_data()

    def objective(trial):
        alpha = trial.suggest_float("alpha", min(alphas), max(alphas))
        l1_ratio = trial.suggest_float("l1_ratio", min(l1_ratios), max(l1_ratios))
        model, train_x, metrics = train_model(data, alpha, l1_ratio)
        storage.flush_all_batches()  # the trial's params are in its run before the model joins them
        try:
            log_training(model, train_x, metrics, {"alpha": alpha, "l1_ratio": l1_ratio}, args.experiment,
                         args.registered_model, run_id=trial._trial_id, data=data)  # the trial is an MLflow run
        finally:
            # Leaving the run marked it FINISHED, or FAILED on an error; Optuna finishes the trial (and
            # the run) itself. Left FAILED, Optuna raises "Cannot tell a FAIL trial" instead of the error.
            MlflowClient().update_run(trial._trial_id, status="RUNNING")
        print(f"alpha={alpha:g} l1_ratio={l1_ratio:g}: rmse={metrics['rmse']:.4f}", flush=True)
        return metrics["rmse"]

    grid_sampler = optuna.samplers.GridSampler({"alpha": alphas, "l1_ratio": l1_ratios})
    for alpha, l1_ratio in points:
        study.sampler = optuna.samplers.PartialFixedSampler({"alpha": alpha, "l1_ratio": l1_ratio}, grid_sampler)
        study.optimize(objective, n_trials=1, catch=())
    storage.flush_all_batches()


def report(args):
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    study, _ = open_study(args.experiment, args.study)
    alphas, l1_ratios = study.user_attrs["grid"]
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    versions = {v.run_id: v.version for v in MlflowClient().search_model_versions(f"name = '{args.registered_model}'")}
    print(f"{'alpha':>8} {'l1_ratio':>8} {'rmse':>8}  version")
    for trial in sorted(trials, key=lambda t: t.value):
        print(f"{trial.params['alpha']:>8g} {trial.params['l1_ratio']:>8g} {trial.value:>8.4f}  "
              f"{versions.get(trial._trial_id, '-')}")
    missing = len(alphas) * len(l1_ratios) - len(completed_points(study))
    if missing:
        print(f"sweep.py: error: {missing} grid points did not finish (a worker failed): run the sweep "
              "again to complete them", file=sys.stderr)
        return EXIT_FAILURE
    if args.promote:
        import os

        from promote import Refused, promote, tolerance
        # Through the same gate as make promote; a refusal is the sweep's last word, not its failure.
        limit = tolerance(lambda message: sys.exit(f"sweep.py: error: {message}"), os.environ.get("PROMOTE_TOLERANCE"))
        # The candidate is this sweep's best version, against whatever @champion is now.
        best = next((versions[t._trial_id] for t in sorted(trials, key=lambda t: t.value) if t._trial_id in versions),
                    None)
        try:
            print(promote(MlflowClient(), args.registered_model, "champion", version=best, tolerance=limit))
        except Refused as refused:
            print(f"@champion not moved: {refused}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    import mlflow
    try:
        check_tracking_server(mlflow.get_tracking_uri())
    except ConnectionError as error:
        print(f"sweep.py: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return {"plan": plan, "work": work, "queue": queue, "report": report}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
