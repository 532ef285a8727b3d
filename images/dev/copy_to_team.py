"""Copies the local stack's experiments, runs and registered models into team mode (`make
copy-to-team`, which runs this in a dev container on the team stack's network).

The source is read straight from ./mlruns (mounted at /mlruns): its SQLite database through MLflow's
own store, its artifacts as files. The destination is the team tracking server, through MLflow's
client API as any client would write to it. Each copy records where it came from in a tag,
`devstack.copied_from`, set last, once the copy is complete; a re-run skips what is there and
deletes a copy that a crash left unfinished before making it again. Nothing in ./mlruns changes.
"""

import argparse
import os
import re
import sys

from mlflow.entities import LoggedModelStatus, Metric, Param, ViewType
from mlflow.tracking import MlflowClient

COPIED_FROM = "devstack.copied_from"
COPYING_FROM = "devstack.copying_from"
ARTIFACT_SCHEME = "mlflow-artifacts:/"


def local_artifacts(mlruns, uri):
    """Where the local server keeps the artifacts of `uri` (mlflow-artifacts:/1/<run>/artifacts)."""
    if not uri.startswith(ARTIFACT_SCHEME):
        raise ValueError(f"artifacts at {uri} are not the local stack's (mlflow-artifacts:/)")
    return os.path.join(mlruns, "artifacts", uri[len(ARTIFACT_SCHEME) :].lstrip("/"))


def logged_model_id(source):
    """m-... of a version registered from models:/m-... (the store leaves its model_id empty)."""
    match = re.fullmatch(r"models:/(m-[0-9a-f]+)", source or "")
    return match and match.group(1)


def all_pages(search, **kwargs):
    token = None
    while True:
        page = search(page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


class Copier:
    def __init__(self, source, destination, mlruns):
        self.source = source
        self.destination = destination
        self.mlruns = mlruns
        self.runs = {}  # source run id -> destination run id
        self.models = {}  # source logged model id -> destination logged model id
        self.counts = dict.fromkeys(
            ("experiments", "runs", "logged models", "model versions"), 0
        )
        self.skipped = 0

    def copy(self):
        for experiment in self.source.search_experiments(view_type=ViewType.ACTIVE_ONLY):
            self.copy_experiment(experiment)
        for model in all_pages(self.source.search_registered_models):
            self.copy_registered_model(model)

    def copy_experiment(self, experiment):
        target = self.destination.get_experiment_by_name(experiment.name)
        if target is None:
            tags = {k: v for k, v in experiment.tags.items() if not k.startswith("mlflow.")}
            target_id = self.destination.create_experiment(experiment.name, tags=tags)
            self.counts["experiments"] += 1
        else:
            target_id = target.experiment_id
        done_runs = self.finished_runs(target_id)
        for run in all_pages(
            self.source.search_runs, experiment_ids=[experiment.experiment_id],
            run_view_type=ViewType.ACTIVE_ONLY, order_by=["attributes.start_time ASC"],
        ):
            if run.info.run_id in done_runs:
                self.runs[run.info.run_id] = done_runs[run.info.run_id]
                self.skipped += 1
            else:
                self.runs[run.info.run_id] = self.copy_run(run, target_id)
        done_models = self.finished_models(target_id)
        for model in all_pages(
            self.source.search_logged_models, experiment_ids=[experiment.experiment_id]
        ):
            if model.model_id in done_models:
                self.models[model.model_id] = done_models[model.model_id]
                self.skipped += 1
            else:
                self.models[model.model_id] = self.copy_logged_model(model, target_id)

    # Source id -> destination id of the finished copies; an unfinished one is deleted.
    def finished_runs(self, experiment_id):
        done = {}
        for run in all_pages(self.destination.search_runs, experiment_ids=[experiment_id]):
            tags = run.data.tags
            if COPIED_FROM in tags:
                done[tags[COPIED_FROM]] = run.info.run_id
            elif COPYING_FROM in tags:
                self.destination.delete_run(run.info.run_id)
        return done

    def finished_models(self, experiment_id):
        done = {}
        for model in all_pages(
            self.destination.search_logged_models, experiment_ids=[experiment_id]
        ):
            if COPIED_FROM in model.tags:
                done[model.tags[COPIED_FROM]] = model.model_id
            elif COPYING_FROM in model.tags:
                self.destination.delete_logged_model(model.model_id)
        return done

    def copy_run(self, run, experiment_id):
        source_id = run.info.run_id
        tags = {k: v for k, v in run.data.tags.items() if k not in (COPIED_FROM, COPYING_FROM)}
        tags[COPYING_FROM] = source_id
        new = self.destination.create_run(
            experiment_id, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name
        )
        new_id = new.info.run_id
        params = [Param(k, v) for k, v in run.data.params.items()]
        metrics = [
            Metric(m.key, m.value, m.timestamp, m.step)
            for key in run.data.metrics
            for m in self.source.get_metric_history(source_id, key)
        ]
        for start in range(0, max(len(params), len(metrics), 1), 100):
            self.destination.log_batch(
                new_id, metrics=metrics[start : start + 100], params=params[start : start + 100]
            )
        folder = local_artifacts(self.mlruns, run.info.artifact_uri)
        if os.path.isdir(folder) and os.listdir(folder):
            self.destination.log_artifacts(new_id, folder)
        self.destination.set_terminated(new_id, run.info.status, end_time=run.info.end_time)
        self.destination.set_tag(new_id, COPIED_FROM, source_id)
        self.counts["runs"] += 1
        return new_id

    def copy_logged_model(self, model, experiment_id):
        tags = {k: v for k, v in model.tags.items() if k not in (COPIED_FROM, COPYING_FROM)}
        tags[COPYING_FROM] = model.model_id
        new = self.destination.create_logged_model(
            experiment_id, name=model.name, source_run_id=self.runs.get(model.source_run_id),
            tags=tags, params=model.params, model_type=model.model_type,
        )
        folder = local_artifacts(self.mlruns, model.artifact_location)
        if os.path.isdir(folder):
            self.destination.log_model_artifacts(new.model_id, folder)
        status = model.status if model.status == LoggedModelStatus.READY else LoggedModelStatus.FAILED
        self.destination.finalize_logged_model(new.model_id, status)
        self.destination.set_logged_model_tags(new.model_id, {COPIED_FROM: model.model_id})
        self.counts["logged models"] += 1
        return new.model_id

    def copy_registered_model(self, model):
        name = model.name
        if not self.destination.search_registered_models(filter_string=f"name = '{name}'"):
            self.destination.create_registered_model(
                name, tags=model.tags, description=model.description
            )
        copied = {
            v.tags.get(COPIED_FROM): v.version
            for v in all_pages(
                self.destination.search_model_versions, filter_string=f"name = '{name}'"
            )
        }
        versions = sorted(
            all_pages(self.source.search_model_versions, filter_string=f"name = '{name}'"),
            key=lambda v: int(v.version),
        )
        new_version = {}
        for version in versions:
            key = f"{name}/{version.version}"
            if key in copied:
                new_version[version.version] = copied[key]
                self.skipped += 1
                continue
            model_id = self.models.get(version.model_id or logged_model_id(version.source))
            if model_id is None:
                print(f"copy-to-team: skipped {key}: its model was not copied", file=sys.stderr)
                continue
            created = self.destination.create_model_version(
                name, source=f"models:/{model_id}", run_id=self.runs.get(version.run_id),
                tags={**version.tags, COPIED_FROM: key}, description=version.description,
                model_id=model_id,
            )
            new_version[version.version] = created.version
            self.counts["model versions"] += 1
        for alias, version in (model.aliases or {}).items():
            if version in new_version:
                self.destination.set_registered_model_alias(name, alias, new_version[version])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlruns", default="/mlruns")
    args = parser.parse_args()
    database = os.path.join(args.mlruns, "mlflow.db")
    if not os.path.exists(database):
        sys.exit(f"copy-to-team: no local runs to copy ({database} does not exist)")
    copier = Copier(MlflowClient(f"sqlite:///{database}"), MlflowClient(), args.mlruns)
    copier.copy()
    made = ", ".join(f"{n} {what}" for what, n in copier.counts.items())
    print(f"copy-to-team: copied {made}; {copier.skipped} already there")


if __name__ == "__main__":
    main()
