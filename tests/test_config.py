from pathlib import Path

import pytest

from dldc.config import ConfigError, DldcConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def test_embedded_defaults_are_the_demo_profile():
    cfg = load_config(None)
    assert cfg == DldcConfig()
    assert cfg.profile == "demo" and cfg.synth.size == 64 and cfg.ingest.format == "karpathy"


def test_repo_params_file_is_valid_and_demo():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.profile == "demo"
    assert cfg.ingest.root == cfg.synth.out


def test_overrides_are_parsed_as_yaml_scalars(tmp_path):
    cfg = load_config(
        None, overrides=["synth.seed=7", "synth.noise_rate=0.5", "tracking.enabled=false", "synth.scenes=[river, lake]"]
    )
    assert cfg.synth.seed == 7 and cfg.synth.noise_rate == 0.5
    assert cfg.tracking.enabled is False and cfg.synth.scenes == ["river", "lake"]


def test_precedence_file_then_overrides_then_flags(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("synth:\n  seed: 1\n  size: 32\n")
    cfg = load_config(params, overrides=["synth.seed=2"], updates={"synth.size": 48})
    assert (cfg.synth.seed, cfg.synth.size) == (2, 48)


def test_paper_profile_changes_defaults_but_file_wins(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("profile: paper\n")
    assert load_config(params).ingest.root == "data/rsicd"
    params.write_text("profile: paper\ningest:\n  root: /data/ucm\n")
    assert load_config(params).ingest.root == "/data/ucm"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("synth:\n  seeed: 1\n", "synth.seeed: unknown key"),
        ("ingest:\n  near_duplicate_max_distance: 99\n", "ingest.near_duplicate_max_distance"),
        ("synth:\n  split_ratios: [0.5, 0.1, 0.1]\n", "split_ratios"),
        ("synth:\n  noise_kinds: [generic, typo]\n", "synth.noise_kinds"),
        ("synth:\n  noise_kinds: [generic, generic]\n", "noise_kinds must list distinct kinds"),
        ("finetune:\n  sampler: shuffle\n", "finetune.sampler"),
        ("bogus_section: {}\n", "bogus_section: unknown key"),
        ("profile: huge\n", "unknown profile 'huge'"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("synth: [\n", "cannot be read as YAML"),
    ],
)
def test_bad_params_name_the_key(tmp_path, text, needle):
    params = tmp_path / "params.yaml"
    params.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(params)
    assert needle in str(err.value)


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, overrides=["synth.seed"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_params_values_that_override_the_profile_are_named(tmp_path, caplog):
    from dldc.config import profile_overrides

    params = tmp_path / "params.yaml"
    params.write_text("profile: paper\nfinetune:\n  resolution: 64\n  rank: 16\n")
    with caplog.at_level("WARNING", logger="dldc.config"):
        cfg = load_config(params)
    assert cfg.finetune.resolution == 64  # the file still wins
    assert "finetune.resolution" in caplog.text and "dldc config init --profile paper" in caplog.text
    assert "finetune.rank" not in caplog.text  # same value as the profile: not an override
    assert profile_overrides("demo", load_config(None, overrides=["finetune.resolution=8"])) == []
    caplog.clear()
    with caplog.at_level("WARNING", logger="dldc.config"):
        load_config("params.yaml")  # the repo's demo params
    assert caplog.text == ""


def test_config_init_writes_a_whole_profile(tmp_path, caplog):
    from click.testing import CliRunner

    from dldc.cli import main

    out = tmp_path / "paper.yaml"
    result = CliRunner().invoke(main, ["config", "init", "--profile", "paper", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with caplog.at_level("WARNING", logger="dldc.config"):
        written = load_config(out)
    assert caplog.text == ""  # nothing in the file contradicts its profile
    assert written == load_config(None, overrides=["profile=paper"])
    assert written.finetune.base == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert written.caption.layout_check is None
    again = CliRunner().invoke(main, ["config", "init", "--profile", "paper", "--out", str(out)])
    assert again.exit_code != 0 and "--force" in again.output
    unknown = CliRunner().invoke(main, ["config", "init", "--profile", "nope", "--out", str(tmp_path / "x.yaml")])
    assert unknown.exit_code != 0 and "unknown profile" in unknown.output


def test_profiles_are_data_files_listed_by_a_command(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import dldc.config as config
    from dldc.cli import main

    listed = CliRunner().invoke(main, ["config", "profiles"])
    names = [line.split("\t")[0] for line in listed.output.splitlines()]
    assert listed.exit_code == 0 and names == ["demo", "paper", "quick", "rsicd-dev"]
    for name in names:  # every shipped profile is a valid configuration
        assert load_config(None, overrides=[f"profile={name}"]).profile == name
    # A new file is a new profile; names are file names, never paths.
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "demo.yaml").write_text("{}\n")
    (profiles / "small.yaml").write_text("# small runs\nsynth:\n  n_images: 40\n")
    monkeypatch.setattr(config, "PROFILES_DIR", profiles)
    assert config.list_profiles() == {"demo": "", "small": "small runs"}
    assert load_config(None, overrides=["profile=small"]).synth.n_images == 40
    for name in ("paper", "../profiles/small", "small.yaml"):
        with pytest.raises(ConfigError, match="unknown profile"):
            load_config(None, overrides=[f"profile={name}"])


def test_params_yaml_spells_out_every_setting():
    """Every setting is a DVC parameter: `dvc exp run -S evaluate.fid=true` needs the key in params.yaml."""
    import yaml

    from dldc.config import flatten

    settings = flatten(DldcConfig().model_dump(mode="json"))
    written = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    missing = [key for key in settings if key not in written and not any(w.startswith(key + ".") for w in written)]
    assert missing == []
