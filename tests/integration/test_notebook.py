"""workspace/experiment.ipynb runs top to bottom, against the tracking server, without edits."""

import nbformat
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient

from tests.support.helpers import WORKSPACE


def test_notebook_executes_and_logs_its_runs(tracking_server, client_env, monkeypatch):
    monkeypatch.setenv("PATH", client_env["PATH"])
    notebook = nbformat.read(WORKSPACE / "experiment.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(WORKSPACE)}}).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    images = [output for output in outputs if output.get("data", {}).get("image/png")]
    # The best run's three evaluation plots, inline, and the comparison of the runs.
    assert len(images) >= 4, f"{len(images)} images shown"

    client = MlflowClient(tracking_server.url)
    [demo] = client.search_runs([client.get_experiment_by_name("tracking-demo").experiment_id])
    assert [m.value for m in client.get_metric_history(demo.info.run_id, "foo")] == [1, 2, 3]
    assert [a.path for a in client.list_artifacts(demo.info.run_id)] == ["output.txt"]
    trained = client.search_runs([client.get_experiment_by_name("wine-quality-notebook").experiment_id])
    assert len(trained) == 5
    for run in trained:
        contexts = {tag.value for dataset_input in run.inputs.dataset_inputs for tag in dataset_input.tags}
        assert {"training", "evaluation"} <= contexts
