import http.server
import json
import threading

import predict
import pytest
from wine_data import TARGET, load_wine_data

from tests.support.helpers import free_port


def test_payload_is_dataframe_split_without_quality():
    rows = load_wine_data().head(3)
    payload = predict.dataframe_split_payload(rows)
    split = payload["dataframe_split"]
    assert set(split) == {"columns", "data"}
    assert TARGET not in split["columns"] and len(split["columns"]) == 11
    assert split["data"][0][0] == rows.iloc[0, 0]
    assert len(split["data"]) == 3
    json.dumps(payload)


def test_unreachable_server_names_the_url_and_the_fix():
    url = f"http://127.0.0.1:{free_port()}/invocations"
    with pytest.raises(RuntimeError, match="cannot reach the scoring server at .*make serve"):
        predict.score(url, {"dataframe_split": {"columns": [], "data": []}}, timeout=5)


@pytest.fixture
def refusing_server():
    """A server that answers every POST like MLflow does for a bad request."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.dumps({"error_code": "BAD_REQUEST", "message": "Model is missing inputs ['pH']"})
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/invocations"
    server.shutdown()
    server.server_close()


def test_server_refusal_is_reported_with_its_message(refusing_server):
    with pytest.raises(RuntimeError, match=r"HTTP 400: Model is missing inputs \['pH'\]"):
        predict.score(refusing_server, {"dataframe_split": {"columns": [], "data": []}})


def test_cli_reports_errors_in_one_line(capsys):
    url = f"http://127.0.0.1:{free_port()}/invocations"
    assert predict.main(["--url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("predict.py: error: cannot reach") and err.count("\n") == 1


@pytest.mark.parametrize("rows", ["0", "-3", "many"])
def test_cli_refuses_a_bad_row_count(rows, capsys):
    with pytest.raises(SystemExit) as caught:
        predict.main(["--rows", rows])
    assert caught.value.code == 2
    assert "--rows" in capsys.readouterr().err
