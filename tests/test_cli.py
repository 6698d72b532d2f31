import hashlib
import subprocess

import pytest
from click.testing import CliRunner

from dldc.cli import main


def _tree_digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("command", [[], ["synth"], ["ingest"], ["config", "show"], ["config", "profiles"]])
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_bad_setting_fails_with_the_key():
    result = CliRunner().invoke(main, ["-S", "synth.seeed=1", "config", "show"])
    assert result.exit_code == 1
    assert "synth.seeed: unknown key" in result.output


def test_config_show_applies_overrides(tmp_path):
    result = CliRunner().invoke(main, ["--params", str(tmp_path / "none.yaml"), "config", "show"])
    assert result.exit_code == 1 and "does not exist" in result.output
    result = CliRunner().invoke(main, ["-S", "synth.size=32", "config", "show", "--json"])
    assert result.exit_code == 0 and '"size": 32' in result.output


def test_synth_twice_with_same_seed_is_byte_identical(tmp_path):
    runner = CliRunner()
    args = ["--no-progress", "-S", "tracking.enabled=false", "synth", "--n-images", "20", "--size", "32"]
    for name in ("a", "b"):
        result = runner.invoke(main, [*args, "--seed", "5", "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    runner.invoke(main, [*args, "--seed", "6", "--out", str(tmp_path / "c")])
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_synth_rejects_bad_flag_values(tmp_path):
    result = CliRunner().invoke(
        main, ["-S", "tracking.enabled=false", "synth", "--noise-rate", "1.5", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 1 and "synth.noise_rate" in result.output


def test_console_script_ingests_synth_output(tmp_path):
    common = ["dldc", "--no-progress", "-S", "tracking.enabled=false"]
    subprocess.run([*common, "synth", "--n-images", "20", "--size", "32", "--out", str(tmp_path / "ds")], check=True)
    done = subprocess.run(
        [*common, "ingest", "--root", str(tmp_path / "ds"), "--out", str(tmp_path / "m")],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "kept" in done.stdout and (tmp_path / "m" / "manifest.parquet").is_file()
    broken = subprocess.run(
        [*common, "ingest", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m2")],
        capture_output=True,
        text=True,
    )
    assert broken.returncode == 1 and "is not a directory" in broken.stderr


def test_the_cli_allocates_arrow_memory_with_the_system_allocator(monkeypatch):
    import pyarrow as pa

    from dldc.cli import use_system_arrow_pool

    before = pa.default_memory_pool()
    try:
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
        use_system_arrow_pool()  # the user's choice stands
        assert pa.default_memory_pool().backend_name == before.backend_name
        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL")
        assert CliRunner().invoke(main, ["config", "show"]).exit_code == 0
        assert pa.default_memory_pool().backend_name == "system"
    finally:
        pa.set_memory_pool(before)
