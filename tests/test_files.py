import os

import pytest

from tsloss_harness import files
from tsloss_harness.files import replace_dir, write_text_atomic


def test_write_text_atomic_writes_and_replaces(tmp_path):
    path = tmp_path / "summary.json"
    write_text_atomic(path, "first")
    write_text_atomic(path, "second")
    assert path.read_text() == "second"
    assert os.listdir(tmp_path) == ["summary.json"]


def test_a_write_cut_off_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text('{"old": 1}')

    def killed(src, dst):
        raise KeyboardInterrupt  # what a SIGINT between writing and renaming looks like

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, '{"new": 2}')
    assert path.read_text() == '{"old": 1}'
    assert os.listdir(tmp_path) == ["summary.json"]


def test_replace_dir_swaps_a_finished_directory_in(tmp_path):
    final, tmp = tmp_path / "prompt", tmp_path / "prompt.tmp"
    final.mkdir()
    (final / "old").write_text("old")
    tmp.mkdir()
    (tmp / "new").write_text("new")
    replace_dir(tmp, final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompt"]
    assert [p.name for p in final.iterdir()] == ["new"]
