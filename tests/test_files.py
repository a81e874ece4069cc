import os
import stat

import pytest

from casdap.files import atomic_path, write_json, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"final_acc": 0.5})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("{half")
        raise RuntimeError("interrupted")
    assert path.read_text() == '{\n  "final_acc": 0.5\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_files_get_the_permissions_of_an_ordinary_open(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a" / "config.yaml", "SEED: 0\n")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a" / "config.yaml").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o644
