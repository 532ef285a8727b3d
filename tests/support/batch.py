"""What the batch tests share (integration: the job on the host; e2e: `make batch`): generated wine
rows, files written and read by extension, the scoring server's predictions, leftover temporary files."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import requests
from wine_data import TARGET, load_wine_data

FEATURES = [name for name in load_wine_data().columns if name != TARGET]


def wine_rows(count, seed=0):
    """count rows like the wine data's (sampled, with a little noise), the features in reverse order,
    an `id` first and the data's `quality` kept: columns the model does not use."""
    rows = load_wine_data().sample(n=count, replace=True, random_state=seed).reset_index(drop=True)
    rows[FEATURES] = rows[FEATURES] + np.random.default_rng(seed).normal(scale=0.01, size=(count, len(FEATURES)))
    rows = rows[["quality", *reversed(FEATURES)]]
    rows.insert(0, "id", np.arange(count))
    return rows


def write(frame, path):
    """frame as CSV or Parquet by path's extension; pyarrow's CSV writer is many times faster than pandas'."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pacsv.write_csv(table, path) if str(path).endswith(".csv") else pq.write_table(table, path)


def read(path):
    return pq.read_table(path).to_pandas() if str(path).endswith(".parquet") else pd.read_csv(path)


def served_predictions(url, frame):
    """What the scoring server at url (…/invocations) answers for these rows, in chunks (its request limit)."""
    answers = []
    for start in range(0, len(frame), 20_000):
        part = frame.iloc[start:start + 20_000]
        body = {"dataframe_split": {"columns": list(part.columns), "data": part.to_numpy().tolist()}}
        response = requests.post(url, json=body, timeout=120)
        assert response.status_code == 200, response.text
        answers += response.json()["predictions"]
    return np.array(answers)


def leftovers(folder, out_name):
    """The temporary files beside OUT that a job left in folder."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{out_name}."))
