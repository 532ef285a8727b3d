"""sweep.py's grid: checked before anything starts, split among workers, named for resuming."""

import pytest
import sweep


def test_the_default_grid_is_the_issues_8_by_3():
    args = sweep.parse_args(["plan"])
    assert args.alphas == [0.0001, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0]
    assert args.l1_ratios == [0.1, 0.5, 0.9]
    assert len(sweep.grid_of(args.alphas, args.l1_ratios)) == 24


@pytest.mark.parametrize("argv,message", [
    (["--alphas", "0.1,abc"], "alphas must be comma-separated numbers, got 'abc'"),
    (["--alphas", "0.1,-1"], "alphas values must be between 0 and 1e+06, got '-1'"),
    (["--alphas", "nan"], "alphas values must be between"),
    (["--l1-ratios", "0.5,1.5"], "l1-ratios values must be between 0 and 1, got '1.5'"),
    (["--l1-ratios", "0.5,0.5"], "l1-ratios lists 0.5 twice"),
    (["--l1-ratios", ""], "l1-ratios must be comma-separated numbers"),
    (["--parallel", "0"], "parallel must be a whole number from 1 to 64, got '0'"),
    (["--parallel", "two"], "parallel must be a whole number"),
])
def test_a_bad_grid_is_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        sweep.parse_args(["plan", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


def test_every_point_goes_to_exactly_one_worker():
    points = sweep.grid_of([0.1, 0.2, 0.3], [0.5, 0.9])
    dealt = sweep.shares(points, 4)
    assert len(dealt) == 4 and sorted(p for share in dealt for p in share) == sorted(points)
    assert sweep.shares(points[:1], 4) == [[points[0]]]  # no idle workers


def test_the_same_grid_in_any_order_is_the_same_study():
    assert sweep.study_name([0.1, 0.2], [0.5]) == sweep.study_name([0.2, 0.1], [0.5])
    assert sweep.study_name([0.1, 0.2], [0.5]) != sweep.study_name([0.1, 0.3], [0.5])
