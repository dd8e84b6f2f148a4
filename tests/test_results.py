"""Atomic result files: a failed write keeps the old file and leaves no temp file; modes follow the umask."""

from __future__ import annotations

import os
import stat

import pytest

from unlearn.results import _atomic_write, read_json, write_json


def test_failed_write_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"acc": 0.5})

    def half_then_crash(f):
        f.write(b'{"acc": 0.')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _atomic_write(path, half_then_crash)
    assert read_json(path) == {"acc": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_written_files_get_the_mode_open_would_give(tmp_path):
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {})
        plain = tmp_path / "b.json"
        plain.write_text("{}")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o640
