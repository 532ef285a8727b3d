"""Score rows with the served wine-quality model, as MLflow 2+ expects: POST /invocations with
{"dataframe_split": {"columns": [...], "data": [[...], ...]}}.

    python predict.py                # the first 5 rows of the shipped data set
    python predict.py --rows 20
    python predict.py --csv new.csv  # your own rows (`,` or `;` separated; a quality column is ignored)

The server comes from SCORING_URL (http://serve:8080/invocations in the dev container).
"""

import argparse
import json
import os
import sys

import pandas as pd
import requests
from wine_data import TARGET, DataError, load_wine_data

DEFAULT_URL = "http://127.0.0.1:5001/invocations"


def dataframe_split_payload(frame):
    """The request body for these rows: column names plus row values, quality dropped."""
    inputs = frame.drop(columns=[TARGET], errors="ignore")
    return {"dataframe_split": json.loads(inputs.to_json(orient="split", index=False))}


def score(url, payload, timeout=60):
    """POST the rows and return the predictions, or raise RuntimeError with the server's reason."""
    try:
        response = requests.post(url, json=payload, timeout=timeout)
    except requests.RequestException as error:
        raise RuntimeError(f"cannot reach the scoring server at {url} ({type(error).__name__}); "
                           "start it with 'make serve'") from None
    if response.status_code != 200:
        try:
            reason = response.json().get("message", response.text)
        except ValueError:
            reason = response.text
        raise RuntimeError(f"the scoring server answered HTTP {response.status_code}: {reason.strip()}")
    return response.json()["predictions"]


def positive_int(text):
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="predict.py", description="Score rows with the served model.")
    parser.add_argument("--rows", type=positive_int, default=5, help="rows of the shipped data to score (default 5)")
    parser.add_argument("--csv", help="score the rows of this CSV file instead")
    parser.add_argument("--url", default=os.environ.get("SCORING_URL", DEFAULT_URL),
                        help="the /invocations URL (default: $SCORING_URL or %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.csv:
            rows = pd.read_csv(args.csv, sep=None, engine="python")
        else:
            rows = load_wine_data().head(args.rows)
        predictions = score(args.url, dataframe_split_payload(rows))
    except (OSError, DataError, RuntimeError, pd.errors.ParserError) as error:
        print(f"predict.py: error: {error}", file=sys.stderr)
        return 1
    print(f"{len(predictions)} predictions from {args.url}:")
    for number, value in enumerate(predictions):
        print(f"  row {number}: {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
