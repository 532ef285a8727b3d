"""The shipped wine-quality data set, loaded only after its checksum matches."""

import hashlib
from pathlib import Path

import pandas as pd

DATA_FILE = Path(__file__).resolve().parent / "data" / "winequality-red.csv"
EXPECTED_MD5 = "2daeecee174368f8a33b82c8cccae3a5"
TARGET = "quality"


class DataError(Exception):
    """The data file is missing or is not the published one."""


def load_wine_data(path=DATA_FILE, expected_md5=EXPECTED_MD5):
    """Return the data set as a DataFrame, or raise DataError naming the file."""
    path = Path(path)
    try:
        content = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read data file {path}: {error.strerror}") from None
    digest = hashlib.md5(content).hexdigest()
    if digest != expected_md5:
        raise DataError(f"data file {path} has md5 {digest}, expected {expected_md5}: "
                        "restore it with 'git checkout -- workspace/data'")
    return pd.read_csv(path, sep=";")


def features_and_target(data):
    """Split a data frame into model inputs and the quality score."""
    return data.drop(columns=[TARGET]), data[TARGET]
