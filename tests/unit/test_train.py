import http.server
import threading

import pytest
import train
from wine_data import load_wine_data

from tests.support.helpers import run_python, tool_env


@pytest.fixture
def recording_server():
    """An HTTP server that records every request: a tracking URI that shows whether train.py called it."""
    requests_seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests_seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", requests_seen
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("args, expected", [
    (["--alpha", "-0.1"], "alpha must be a number >= 0, got '-0.1'"),
    (["--alpha", "abc"], "alpha must be a number >= 0, got 'abc'"),
    (["--alpha", "nan"], "alpha must be a number >= 0"),
    (["--alpha", "inf"], "alpha must be a number >= 0"),
    (["--l1-ratio", "1.5"], "l1_ratio must be a number between 0 and 1, got '1.5'"),
    (["--l1-ratio", "-0.01"], "l1_ratio must be a number between 0 and 1"),
    (["--l1-ratio", "x"], "l1_ratio must be a number between 0 and 1"),
    (["-1", "0.5"], "alpha must be a number >= 0, got '-1'"),
    (["0.5", "2"], "l1_ratio must be a number between 0 and 1, got '2'"),
    (["0.5", "--alpha", "0.3"], "alpha given twice"),
])
def test_bad_arguments_exit_2_with_one_line_and_create_no_run(recording_server, args, expected):
    tracking_uri, requests_seen = recording_server
    result = run_python("train.py", *args, env=tool_env(MLFLOW_TRACKING_URI=tracking_uri))
    assert result.returncode == 2
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert requests_seen == [], "train.py talked to the tracking server despite bad arguments"


def test_positional_and_option_forms_agree():
    positional = train.parse_args(["0.3", "0.7"])
    options = train.parse_args(["--alpha", "0.3", "--l1-ratio", "0.7"])
    assert (positional.alpha, positional.l1_ratio) == (options.alpha, options.l1_ratio) == (0.3, 0.7)


def test_defaults_are_the_tutorials():
    args = train.parse_args([])
    assert (args.alpha, args.l1_ratio) == (0.5, 0.5)
    assert args.registered_model == "wine-quality"


def test_boundaries_are_accepted():
    args = train.parse_args(["--alpha", "0", "--l1-ratio", "1"])
    assert (args.alpha, args.l1_ratio) == (0.0, 1.0)


def test_unreachable_tracking_server_gives_one_clear_line():
    result = run_python("train.py", "0.5", "0.5", env=tool_env(MLFLOW_TRACKING_URI="http://127.0.0.1:9"),
                        timeout=60)
    assert result.returncode == 1
    assert "cannot reach the MLflow tracking server at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_alpha_half_l1_half_reproduces_the_tutorials_rmse():
    _, _, metrics = train.train_model(load_wine_data(), 0.5, 0.5)
    assert metrics["rmse"] == pytest.approx(0.79, abs=0.01)
    assert 0 < metrics["mae"] < metrics["rmse"]


def test_training_is_deterministic():
    data = load_wine_data()
    first = train.train_model(data, 0.2, 0.8)[2]
    second = train.train_model(data, 0.2, 0.8)[2]
    assert first == second


def test_stronger_regularisation_fits_worse():
    data = load_wine_data()
    assert train.train_model(data, 0.01, 0.5)[2]["rmse"] < train.train_model(data, 1.0, 0.5)[2]["rmse"]
