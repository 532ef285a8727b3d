"""Team mode's tracking app (`mlflow server --app-name devstack-team`): MLflow's basic-auth app, plus
the answer MLflow lacks when the object store cannot be reached. MLflow lets that error escape as a
bare HTML "500 Internal Server Error"; here artifact calls get 503 with a JSON message that names
the cause, and everything that needs no artifact (runs, metrics, the registry) keeps working."""

from botocore.exceptions import ConnectionError as StorageConnectionError
from botocore.exceptions import HTTPClientError
from flask import jsonify
from mlflow.server import app
from mlflow.server.auth import create_app as create_auth_app


def storage_unavailable(error):
    response = jsonify(
        error_code="TEMPORARILY_UNAVAILABLE",
        message=f"The artifact store does not answer ({error}). Runs, metrics and the model registry "
        "still work; artifacts are kept and come back with it (make ps TEAM=1 shows storage).",
    )
    response.status_code = 503
    return response


def create_app():
    for error in (StorageConnectionError, HTTPClientError):
        app.register_error_handler(error, storage_unavailable)
    return create_auth_app(app)
