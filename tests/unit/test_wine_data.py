import shutil

import pytest
from wine_data import DATA_FILE, TARGET, DataError, features_and_target, load_wine_data


def test_shipped_data_loads_with_all_rows_and_columns():
    data = load_wine_data()
    assert data.shape == (1599, 12)
    assert data.columns[-1] == TARGET
    assert data.notna().all().all()


def test_features_and_target_split_off_quality():
    inputs, target = features_and_target(load_wine_data())
    assert TARGET not in inputs.columns
    assert len(inputs.columns) == 11
    assert target.between(0, 10).all()


def test_missing_file_gives_one_line_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(DataError) as caught:
        load_wine_data(missing)
    message = str(caught.value)
    assert str(missing) in message
    assert "\n" not in message


def test_altered_file_is_refused_with_its_name(tmp_path):
    altered = tmp_path / "winequality-red.csv"
    shutil.copy(DATA_FILE, altered)
    content = altered.read_bytes()
    altered.write_bytes(content.replace(b"7.4;0.7;", b"7.5;0.7;", 1))
    with pytest.raises(DataError) as caught:
        load_wine_data(altered)
    message = str(caught.value)
    assert str(altered) in message and "md5" in message
    assert "\n" not in message
