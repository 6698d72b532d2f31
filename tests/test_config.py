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
