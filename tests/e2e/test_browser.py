"""The MLflow UI and JupyterLab of the stack as a person sees them: headless Chromium (Debian's, never
downloaded) runs the apps; the tests read the text on the page. On a failure a screenshot is saved
beside the test's temporary files and named in the message."""

import re

import pytest
from mlflow.tracking import MlflowClient

from tests.support.browser import chromium_path, dump_dom, screenshot, visible_text

# What only MLflow's GenAI view shows.
GENAI_ONLY = ("Observability", "Training runs", "Detect Issues")


@pytest.fixture(scope="module", autouse=True)
def chromium():
    if chromium_path() is None:
        pytest.fail("end-to-end tests need Debian's chromium (apt-get install chromium)")


def page_text(url, tmp_path, name):
    return visible_text(dump_dom(url, tmp_path / f"profile-{name}"))


def check_page(url, tmp_path, name, check):
    """check(text) on the page at url; on failure, a screenshot for the person reading the report."""
    text = page_text(url, tmp_path, name)
    try:
        check(text)
    except AssertionError as error:
        picture = screenshot(url, tmp_path / f"{name}.png", tmp_path / f"profile-{name}-shot")
        raise AssertionError(f"{error}\nscreenshot: {picture}\npage text: {text[:2000]}") from None


def printed_ui_url(stack):
    return re.search(r"MLflow UI\s+(\S+)", stack.make("urls").stdout).group(1)


def test_the_printed_ui_url_opens_the_runs_table_with_rmse(stack, trained_run, tmp_path):
    run_id, _ = trained_run
    url = printed_ui_url(stack)
    assert "/runs?" in url and "workflowType=machine_learning" in url
    run = MlflowClient(stack.url("TRACKING_PORT")).get_run(run_id)

    def check(text):
        cells = text.split(" | ")
        assert run.info.run_name in cells
        assert "rmse" in cells and "alpha" in cells
        assert str(run.data.metrics["rmse"]) in cells  # the UI shows the full value (the cell cuts it)
        assert not [word for word in GENAI_ONLY if word in text]

    check_page(url, tmp_path, "runs", check)


def test_without_the_parameter_the_same_page_is_the_genai_view(stack, trained_run, tmp_path):
    """The control: what the printed URL avoids, so the check above can tell the two apart."""
    url = re.sub(r"workflowType=machine_learning&?", "", printed_ui_url(stack))

    def check(text):
        assert [word for word in GENAI_ONLY if word in text]

    check_page(url, tmp_path, "genai", check)


def test_jupyterlab_opens_the_notebook_writable_and_without_prompts(stack, tmp_path):
    # ?reset: a fresh layout, not the one a previous visit saved on the server.
    url = f"{stack.url('JUPYTER_PORT')}/lab/tree/experiment.ipynb?reset&token={stack.secret('jupyter_token')}"

    def check(text):
        assert "Experiment tracking with MLflow" in text  # the notebook's first cell: it rendered
        assert "notebook is read-only" not in text
        assert "official Jupyter news" not in text

    check_page(url, tmp_path, "jupyterlab", check)
