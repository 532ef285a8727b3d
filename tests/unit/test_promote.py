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
def test_bad_arguments_are_one_line_and_exit_2(capsys, monkeypatch, argv, message):
    monkeypatch.setenv("PROMOTE_TOLERANCE", "0")
    with pytest.raises(SystemExit) as exit_:
        promote.parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("candidate, current, tolerance, moves, words", [
    (0.70, 0.80, 0.0, True, "better by 12.5%"),
    (0.80, 0.80, 0.0, True, "as good"),
    (0.804, 0.80, 0.01, True, "worse by 0.5%, within the tolerance of 1.0%"),
    (0.808, 0.80, 0.01, True, "worse by 1.0%, within the tolerance of 1.0%"),
    (0.82, 0.80, 0.01, False, "worse by 2.5%, beyond the tolerance of 1.0%"),
    (0.8001, 0.80, 0.0, False, "beyond the tolerance of 0.0%"),
    (0.95, None, 0.0, True, "no version had the alias"),
])
def test_the_gates_decisions(candidate, current, tolerance, moves, words):
    decision = promote.gate(candidate, current, tolerance)
    assert decision.move is moves
    assert words in decision.reason


@pytest.mark.parametrize("raw", ["-0.1", "abc", "inf", "nan", ""])
def test_a_tolerance_that_is_no_fraction_is_one_line(capsys, raw):
    with pytest.raises(SystemExit) as exit_:
        promote.parse_args(["--tolerance", raw])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "PROMOTE_TOLERANCE must be a number >= 0" in err and len(err.splitlines()) == 1


def test_without_a_tolerance_it_says_what_sets_it(capsys, monkeypatch):
    monkeypatch.delenv("PROMOTE_TOLERANCE", raising=False)
    with pytest.raises(SystemExit):
        promote.parse_args([])
    assert "PROMOTE_TOLERANCE (make promote sets it from .env)" in capsys.readouterr().err
