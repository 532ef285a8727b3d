"""What `make batch` passes on from its job's stderr, and who owns OUT when make runs as root."""

import io
from pathlib import Path

from devstack import batch
from devstack.settings import load
from tests.unit.host.support import checkout


def passed_on(text, status, capsys):
    filter_ = batch.Chatterless(io.StringIO(text))
    filter_.start()
    filter_.finish(status)
    return capsys.readouterr().err


def test_compose_chatter_and_the_echoed_status_are_dropped(capsys):
    v1 = "Creating p_batch_run ... \nCreating p_batch_run ... done\nbatch: IN has no column 'pH'\n1\n"
    assert passed_on(v1, 1, capsys) == "batch: IN has no column 'pH'\n"
    v2 = "\nbatch: IN has no column 'pH'\n"  # Compose v2 adds an empty line
    assert passed_on(v2, 1, capsys) == "batch: IN has no column 'pH'\n"


def test_the_jobs_own_lines_and_a_redrawn_bar_pass(capsys):
    text = "\rbatch: [###...]  10%  1 rows\x1b[K\rbatch: [######]  100%  2 rows\x1b[K\n7\nbatch: done\n"
    assert passed_on(text, 0, capsys) == text


def test_as_root_out_is_the_containers_users_under_workspace_and_roots_elsewhere(tmp_path):
    settings = load(checkout(tmp_path / "checkout"), host_ids=(0, 0))
    assert batch.owner_as_root(settings, settings.root / "workspace" / "a" / "scored.csv") == (1000, 1000)
    assert batch.owner_as_root(settings, settings.root / "mlruns" / "scored.csv") == (1000, 1000)
    assert batch.owner_as_root(settings, settings.root / "workspace-old" / "scored.csv") == (0, 0)
    assert batch.owner_as_root(settings, Path("/data/scored.csv")) == (0, 0)
