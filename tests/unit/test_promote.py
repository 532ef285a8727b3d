"""promote.py's choice and its argument checks, without a server."""

import math

import promote
import pytest


def test_the_lowest_score_wins():
    assert promote.best_version({"1": 0.71, "2": 0.64, "3": 0.69}) == "2"


def test_a_tie_goes_to_the_newer_version():
    assert promote.best_version({"2": 0.64, "10": 0.64, "3": 0.7}) == "10"


def test_versions_without_a_score_are_never_chosen():
    assert promote.best_version({"1": None, "2": math.nan, "3": 0.9}) == "3"
    with pytest.raises(LookupError, match="no version has an 'rmse' metric"):
        promote.best_version({"1": None})


@pytest.mark.parametrize("argv,message", [
    (["--version", "0"], "version must be a positive whole number"),
    (["--version", "two"], "version must be a positive whole number"),
    (["--alias", "7"], "alias must be letters"),
    (["--alias", "a b"], "alias must be letters"),
    (["--model", "x' OR name LIKE '%"], "model must be a registered model's name"),
])
def test_bad_arguments_are_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        promote.parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
