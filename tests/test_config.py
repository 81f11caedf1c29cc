"""Tests for starqso.config: YAML round trips, preset overrides and one-line errors."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_one_line_error

from starqso.config import (
    PRESETS,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainingConfig,
    config_from_dict,
    config_to_dict,
    get_preset,
    load_config,
    save_config,
)
from starqso.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]



def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["base", "tiny"])
def test_save_load_round_trip(tmp_path, name):
    config = get_preset(name)
    path = save_config(config, tmp_path / "run.yaml")
    assert load_config(path) == config
    assert config_from_dict(config_to_dict(config)) == config
    assert not [p for p in tmp_path.iterdir() if p.name != "run.yaml"]  # no temp file left


def test_saved_yaml_is_plain_sorted_block_style(tmp_path):
    text = save_config(get_preset("tiny"), tmp_path / "run.yaml").read_text(encoding="utf-8")
    assert text.startswith("# starqso run configuration\ndata:\n  cutout_size: 24\n")
    assert "  image_filters:\n  - 4\n  - 8\n" in text
    assert "{" not in text and "!!" not in text
    assert text.index("data:") < text.index("model:") < text.index("preset:")


def test_round_trip_of_changed_values(tmp_path):
    config = dataclasses.replace(
        get_preset("tiny"),
        data=dataclasses.replace(get_preset("tiny").data, qso_fraction=0.3, test_fraction=0.1),
    )
    assert load_config(save_config(config, tmp_path / "a.yaml")) == config


def test_tiny_preset_values():
    tiny = get_preset("tiny")
    assert tiny.preset == "tiny"
    assert tiny.model == ModelConfig(24, (4, 8), (4, 8), 8, 4, 8, 0.0, True)
    assert (tiny.data.num_objects, tiny.data.cutout_size) == (96, 24)
    assert tiny.data.validation_fraction == 0.25
    training = tiny.training
    assert training.batch_size == 16 and training.early_stopping_patience == 2
    assert {training.encoder_epochs, training.gan_epochs, training.fusion_epochs,
            training.image_epochs} == {2}
    assert PRESETS["base"] == RunConfig()


def test_yaml_overrides_apply_on_top_of_named_preset(tmp_path):
    path = write(tmp_path, "preset: tiny\ntraining:\n  batch_size: 8\n  learning_rate: 1e-4\n")
    config = load_config(path)
    tiny = get_preset("tiny")
    assert config.preset == "tiny"
    assert config.training.batch_size == 8
    assert config.training.learning_rate == 1e-4  # YAML 1.1 reads 1e-4 as a string
    assert config.model == tiny.model and config.data == tiny.data
    assert config.training.gan_epochs == tiny.training.gan_epochs


def test_preset_argument_is_used_when_the_file_names_none(tmp_path):
    path = write(tmp_path, "model:\n  dropout: 0.5\n")
    config = load_config(path, preset="tiny")
    assert config.model.dropout == 0.5 and config.model.image_size == 24
    assert config.preset == "tiny"
    assert config_from_dict({"model": {"dropout": 0.5}}, preset="tiny") == config


def test_file_preset_is_used_without_preset_argument(tmp_path):
    config = load_config(write(tmp_path, "preset: tiny\nmodel:\n  dropout: 0.5\n"))
    assert config.preset == "tiny" and config.model.image_size == 24
    assert load_config(write(tmp_path, "model:\n  dropout: 0.5\n")).preset == "base"


def test_file_preset_and_preset_argument_may_agree(tmp_path):
    path = write(tmp_path, "preset: tiny\ntraining:\n  batch_size: 8\n")
    assert load_config(path, preset="tiny") == load_config(path)
    assert load_config(path, preset="tiny").preset == "tiny"


def test_file_preset_and_preset_argument_must_not_differ(tmp_path):
    path = write(tmp_path, "preset: tiny\n")
    with pytest.raises(InputError) as excinfo:
        load_config(path, preset="base")
    assert_one_line_error(excinfo, f"config file {path}", "preset: tiny", "--preset base",
                          "Received:")
    with pytest.raises(InputError) as excinfo:
        config_from_dict({"preset": "base"}, preset="tiny")
    assert_one_line_error(excinfo, "<dict>", "preset: base", "--preset tiny")


def test_unknown_preset_argument_lists_known_presets(tmp_path):
    with pytest.raises(InputError) as excinfo:
        load_config(write(tmp_path, ""), preset="huge")
    assert_one_line_error(excinfo, "'huge'", "base, large, tiny")


def test_empty_file_and_empty_section_mean_no_overrides(tmp_path):
    assert load_config(write(tmp_path, "")) == get_preset("base")
    assert load_config(write(tmp_path, "preset: tiny\ntraining:\n")) == get_preset("tiny")


def test_ints_convert_to_floats_and_lists_to_tuples():
    config = config_from_dict({"training": {"learning_rate": 1}, "model": {"image_filters": [8]},
                               "data": {"qso_fraction": None}})
    assert config.training.learning_rate == 1.0
    assert isinstance(config.training.learning_rate, float)
    assert config.model.image_filters == (8,)
    assert config.data.qso_fraction is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("epochs: 3\n", "'epochs'"),
        ("training:\n  epochs: 3\n", "'training.epochs'"),
        ("model:\n  image_sise: 32\n", "'model.image_sise'"),
    ],
)
def test_unknown_key_names_dotted_key_file_and_allowed_keys(tmp_path, text, key):
    with pytest.raises(InputError) as excinfo:
        load_config(write(tmp_path, text))
    assert_one_line_error(excinfo, key, "run.yaml", "allowed:")
    if "training" in text:
        assert_one_line_error(excinfo, "augment, batch_size")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("training:\n  batch_size: abc\n", "training.batch_size must be an integer >= 1"),
        ("training:\n  batch_size: true\n", "training.batch_size"),
        ("training:\n  batch_size: 3.0\n", "training.batch_size"),
        ("model:\n  image_filters: [8, x]\n", "model.image_filters"),
        ("model:\n  image_filters: []\n", "model.image_filters"),
        ("model:\n  image_filters: 8\n", "model.image_filters"),
        ("training:\n  learning_rate: null\n", "training.learning_rate"),
        ("training:\n  learning_rate: '0.1'\n", "training.learning_rate"),
        ("training:\n  learning_rate: .nan\n", "training.learning_rate"),
        ("training:\n  augment: 1\n", "training.augment must be true or false"),
        ("data:\n  qso_fraction: yes\n", "data.qso_fraction"),
        ("preset: 3\n", "preset"),
        ("training: [1, 2]\n", "training must be a mapping"),
    ],
)
def test_wrong_types_are_input_errors(tmp_path, text, key):
    with pytest.raises(InputError) as excinfo:
        load_config(write(tmp_path, text))
    assert_one_line_error(excinfo, key, "Received:", "in file", "run.yaml")


def test_wrong_type_message_style(tmp_path):
    with pytest.raises(InputError) as excinfo:
        load_config(write(tmp_path, "training:\n  batch_size: abc\n"))
    assert str(excinfo.value).endswith(
        "training.batch_size must be an integer >= 1. Received: 'abc' in file "
        + str(tmp_path / "run.yaml")
    )


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"data": {"cutout_size": 24}}, "data.cutout_size must be >= model.image_size"),
        ({"data": {"galaxy_fraction": 0.3}}, "data.galaxy_fraction simulates galaxies"),
        ({"data": {"validation_fraction": 1.0}}, "data.validation_fraction"),
        ({"data": {"validation_fraction": 0.5, "test_fraction": 0.5}}, "test_fraction must be < 1"),
        ({"data": {"qso_fraction": 1.5}}, "data.qso_fraction"),
        ({"data": {"num_objects": 1}}, "data.num_objects"),
        ({"model": {"image_size": 4}}, "model.image_size must be an integer >= 8"),
        ({"model": {"image_size": 16}}, "model.photometry needs model.image_size >= 22"),
        ({"model": {"dropout": 1.0}}, "model.dropout"),
        ({"model": {"trunk_size": 40}}, "model.trunk_size must be <= model.image_size (32)"),
        ({"model": {"trunk_size": 25}}, "differ from it by an even number of pixels"),
        ({"model": {"shared_trunk": True, "generator": "diffusion"}},
         "model.shared_trunk reads the GAN generator's trunk embedding"),
        ({"training": {"gan_epochs": -1}}, "training.gan_epochs"),
        ({"training": {"learning_rate": 0}}, "training.learning_rate must be a number > 0"),
        ({"training": {"early_stopping_patience": 0}}, "training.early_stopping_patience"),
        ({"training": {"gan_reconstruction_weight": -0.1}}, "gan_reconstruction_weight"),
    ],
)
def test_range_violations_are_input_errors(overrides, key):
    with pytest.raises(InputError) as excinfo:
        config_from_dict(overrides, source="run.yaml")
    assert_one_line_error(excinfo, key, "in file run.yaml")


def test_zero_epochs_and_zero_test_fraction_are_allowed():
    config = config_from_dict({"training": {"gan_epochs": 0}, "data": {"test_fraction": 0}})
    assert config.training.gan_epochs == 0 and config.data.test_fraction == 0.0


def test_direct_construction_is_checked_too():
    with pytest.raises(InputError, match="model.image_size"):
        ModelConfig(image_size=True)
    with pytest.raises(InputError, match="data.cutout_size must be >= model.image_size"):
        RunConfig(data=DataConfig(cutout_size=16))
    with pytest.raises(InputError, match="test_fraction must be < 1"):
        RunConfig(data=DataConfig(validation_fraction=0.5, test_fraction=0.5))
    with pytest.raises(InputError, match="model.photometry needs"):
        RunConfig(model=ModelConfig(image_size=16), data=DataConfig(cutout_size=16))
    with pytest.raises(InputError, match="preset must be a non-empty string"):
        RunConfig(preset="")
    assert ModelConfig(image_filters=[8, 16]).image_filters == (8, 16)
    assert TrainingConfig(learning_rate="5e-4").learning_rate == 5e-4


# One value out of range or of the wrong type for every checked field, set in Python.
PYTHON_VIOLATIONS = [
    (ModelConfig, "image_size", 7, "an integer >= 8"),
    (ModelConfig, "trunk_size", 7, "an integer >= 8 or null"),
    (ModelConfig, "image_filters", (8, 0), "a non-empty list of integers >= 1"),
    (ModelConfig, "spectrum_filters", (), "a non-empty list of integers >= 1"),
    (ModelConfig, "feature_dim", 0, "an integer >= 1"),
    (ModelConfig, "noise_dim", 0, "an integer >= 1"),
    (ModelConfig, "dense_units", 0, "an integer >= 1"),
    (ModelConfig, "dropout", 1.0, "a number in [0, 1)"),
    (ModelConfig, "photometry", 1, "true or false"),
    (ModelConfig, "photometry_head", "yes", "true or false"),
    (ModelConfig, "photometry_noise", -0.1, "a number in [0, 10)"),
    (ModelConfig, "weighted_fwhm", (1.5, 0.0), "a list of FWHMs in (0, 6] arcsec (may be empty)"),
    (ModelConfig, "trunk", "resnet18",
     "one of cnn, resnet50, densenet121, vgg16, xception, efficientnetb0, hybrid"),
    (ModelConfig, "trunk_weights", "", "a non-empty string or null"),
    (ModelConfig, "shared_trunk", "no", "true or false"),
    (ModelConfig, "generator", "vae", "one of gan, diffusion"),
    (ModelConfig, "diffusion_steps", 0, "an integer >= 1"),
    (ModelConfig, "metric_loss", "triplet", "one of none, proxy_nca, norm_softmax"),
    (ModelConfig, "metric_dim", 1, "an integer >= 2"),
    (ModelConfig, "classes", ["STAR", "GALAXY"],
     "one of ['STAR', 'QSO'] or ['STAR', 'QSO', 'GALAXY']"),
    (DataConfig, "num_objects", 1, "an integer >= 2"),
    (DataConfig, "simulation_seed", -1, "an integer >= 0"),
    (DataConfig, "cutout_size", 15, "an integer >= 16"),
    (DataConfig, "qso_fraction", 1.5, "a number in [0, 1] or null"),
    (DataConfig, "validation_fraction", 0.0, "a number in (0, 1)"),
    (DataConfig, "test_fraction", 1.0, "a number in [0, 1)"),
    (DataConfig, "split_seed", -1, "an integer >= 0"),
    (DataConfig, "export_check_objects", 0, "an integer >= 1"),
    (DataConfig, "export_calibration_objects", 0, "an integer >= 1"),
    (DataConfig, "sky_backgrounds_fraction", 1.5, "a number in [0, 1] or null"),
    (DataConfig, "reddening_fraction", -0.1, "a number in [0, 1]"),
    (DataConfig, "max_ebv", 11, "a number in [0, 10]"),
    (DataConfig, "neighbour_density_fraction", 2, "a number in [0, 1]"),
    (DataConfig, "magnitude_mixing_fraction", 2, "a number in [0, 1]"),
    (DataConfig, "high_z_magnitude_fraction", -0.5, "a number in [0, 1]"),
    (DataConfig, "galaxy_fraction", 1.0, "a number in [0, 1)"),
    (DataConfig, "max_neighbour_density", 0.5, "a number in [1, 1000]"),
    (TrainingConfig, "seed", -1, "an integer >= 0"),
    (TrainingConfig, "batch_size", 0, "an integer >= 1"),
    (TrainingConfig, "learning_rate", 0.0, "a number > 0"),
    (TrainingConfig, "encoder_epochs", -1, "an integer >= 0"),
    (TrainingConfig, "gan_epochs", -1, "an integer >= 0"),
    (TrainingConfig, "diffusion_epochs", -1, "an integer >= 0"),
    (TrainingConfig, "metric_epochs", -1, "an integer >= 0"),
    (TrainingConfig, "fusion_epochs", -1, "an integer >= 0"),
    (TrainingConfig, "photometry_epochs", -1, "an integer >= 0"),
    (TrainingConfig, "image_epochs", -1, "an integer >= 0"),
    (TrainingConfig, "gan_learning_rate", -1e-4, "a number > 0"),
    (TrainingConfig, "gan_reconstruction_weight", -0.1, "a number >= 0"),
    (TrainingConfig, "gan_distillation_weight", -0.1, "a number >= 0"),
    (TrainingConfig, "early_stopping_patience", 0, "an integer >= 1"),
    (TrainingConfig, "augment", "yes", "true or false"),
    (TrainingConfig, "noise_augment", 0.5, "a number in [1.0, 10.0]"),
    (TrainingConfig, "mixed_precision", None, "true or false"),
]


def test_python_violations_cover_every_field():
    covered = {(cls, name) for cls, name, _, _ in PYTHON_VIOLATIONS}
    assert covered == {(cls, f.name) for cls in (ModelConfig, DataConfig, TrainingConfig)
                       for f in dataclasses.fields(cls)}


@pytest.mark.parametrize(("cls", "name", "value", "expected"), PYTHON_VIOLATIONS,
                         ids=[f"{c.__name__}.{n}" for c, n, _, _ in PYTHON_VIOLATIONS])
def test_every_field_check_fires_for_a_value_set_in_python(cls, name, value, expected):
    section = {ModelConfig: "model", DataConfig: "data", TrainingConfig: "training"}[cls]
    with pytest.raises(InputError) as excinfo:
        cls(**{name: value})
    assert str(excinfo.value) == f"{section}.{name} must be {expected}. Received: {value!r}"


def test_invalid_yaml_names_file_and_line(tmp_path):
    with pytest.raises(InputError) as excinfo:
        load_config(write(tmp_path, "training:\n  batch_size: 8\n bad: [\n"))
    assert_one_line_error(excinfo, "run.yaml", "not valid YAML", "line ")


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_non_mapping_top_level_names_file(tmp_path, text):
    with pytest.raises(InputError) as excinfo:
        load_config(write(tmp_path, text))
    assert_one_line_error(excinfo, "run.yaml", "mapping")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(InputError) as excinfo:
        load_config(tmp_path / "absent.yaml")
    assert_one_line_error(excinfo, "absent.yaml", "does not exist")
    with pytest.raises(InputError) as excinfo:
        load_config(tmp_path)
    assert_one_line_error(excinfo, str(tmp_path), "folder")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError) as excinfo:
        load_config(binary)
    assert_one_line_error(excinfo, "binary.yaml")


def test_save_into_missing_folder_is_input_error(tmp_path):
    with pytest.raises(InputError) as excinfo:
        save_config(get_preset("base"), tmp_path / "nope" / "run.yaml")
    assert_one_line_error(excinfo, "run.yaml")


def test_unknown_preset_lists_known_presets(tmp_path):
    with pytest.raises(InputError) as excinfo:
        get_preset("huge")
    assert_one_line_error(excinfo, "'huge'", "base", "tiny")
    with pytest.raises(InputError) as excinfo:
        load_config(write(tmp_path, "preset: huge\n"))
    assert_one_line_error(excinfo, "'huge'", "base, large, tiny", "run.yaml")


def test_importing_config_does_not_import_tensorflow():
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    code = ("import starqso.config, sys; "
            "assert not {'tensorflow', 'keras'} & set(sys.modules), sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], env=environment,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
