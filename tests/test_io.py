import os
import stat

from dldc.io import atomic_dir, write_json


def test_atomic_outputs_get_the_usual_modes_and_replace_old_ones(tmp_path):
    mask = os.umask(0o022)
    try:
        write_json(tmp_path / "report.json", {"a": 1})
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "x").write_text("old")
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "y").write_text("new")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "report.json"]
