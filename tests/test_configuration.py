"""LSTMLMConfig: defaults, validation table, kwargs pass-through and the save/load round trip."""

import json

import pytest
from transformers import AutoConfig

from modeling_lstmlm import LSTMLMConfig


def test_defaults_and_embedding_size_follows_hidden_size():
    config = LSTMLMConfig(hidden_size=96)
    assert config.model_type == "lstmlm"
    assert config.embedding_size == 96
    assert config.tie_word_embeddings is True
    assert config.use_cache is True
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 0, 1)
    assert config.layer_types == ["linear_attention"] * config.num_hidden_layers


def test_embedding_size_can_differ():
    config = LSTMLMConfig(hidden_size=64, embedding_size=32)
    assert (config.hidden_size, config.embedding_size) == (64, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 0}, "`vocab_size` must be a positive int, got 0"),
        ({"hidden_size": -3}, "`hidden_size` must be a positive int, got -3"),
        ({"hidden_size": 12.5}, "`hidden_size` must be a positive int, got 12.5"),
        ({"num_hidden_layers": 0}, "`num_hidden_layers` must be a positive int, got 0"),
        ({"num_hidden_layers": True}, "`num_hidden_layers` must be a positive int, got True"),
        ({"embedding_size": 0}, "`embedding_size` must be a positive int, got 0"),
        ({"embedding_dropout": 1.5}, "`embedding_dropout` must be in [0, 1), got 1.5"),
        ({"hidden_dropout": 1.0}, "`hidden_dropout` must be in [0, 1), got 1.0"),
        ({"output_dropout": -0.1}, "`output_dropout` must be in [0, 1), got -0.1"),
        ({"weight_dropout": 1}, "`weight_dropout` must be in [0, 1), got 1"),
        ({"embedding_row_dropout": "0.1"}, "`embedding_row_dropout` must be in [0, 1), got '0.1'"),
        ({"classifier_dropout": 2.0}, "`classifier_dropout` must be in [0, 1), got 2.0"),
        ({"activation_regularization": -1.0}, "`activation_regularization` must be a number >= 0, got -1.0"),
        (
            {"temporal_activation_regularization": -2},
            "`temporal_activation_regularization` must be a number >= 0, got -2",
        ),
        ({"initializer_range": 0}, "`initializer_range` must be a number > 0, got 0"),
        ({"variational_dropout": "yes"}, "`variational_dropout` must be a bool, got 'yes'"),
        ({"tie_word_embeddings": 1}, "`tie_word_embeddings` must be a bool, got 1"),
        ({"vocab_size": 100, "pad_token_id": 100}, "`pad_token_id` must be None or a token id in [0, vocab_size=100)"),
        ({"vocab_size": 100, "bos_token_id": -1}, "`bos_token_id` must be None or a token id in [0, vocab_size=100)"),
        ({"vocab_size": 100, "eos_token_id": [0, 200]}, "`eos_token_id` must be None or a token id"),
    ],
    ids=lambda value: "-".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else "",
)
def test_invalid_values_raise_value_error_naming_the_field(kwargs, message):
    with pytest.raises(ValueError) as excinfo:
        LSTMLMConfig(**kwargs)
    assert message in str(excinfo.value)


def test_unknown_kwargs_pass_through_and_token_id_lists_are_accepted():
    config = LSTMLMConfig(my_custom_field="hello", eos_token_id=[0, 5], pad_token_id=None)
    assert config.my_custom_field == "hello"
    assert config.eos_token_id == [0, 5]
    assert config.pad_token_id is None


def test_save_and_load_round_trip(tmp_path):
    config = LSTMLMConfig(
        vocab_size=321,
        hidden_size=48,
        num_hidden_layers=3,
        embedding_size=24,
        tie_word_embeddings=False,
        weight_dropout=0.25,
        variational_dropout=True,
        activation_regularization=2.0,
        my_custom_field=[1, 2],
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "lstmlm"
    assert saved["auto_map"]["AutoConfig"] == "configuration_lstmlm.LSTMLMConfig"
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, LSTMLMConfig)
    expected = config.to_dict()
    actual = reloaded.to_dict()
    assert actual.pop("_name_or_path") == str(tmp_path)
    expected.pop("_name_or_path")
    assert actual == expected


def test_invalid_saved_config_fails_on_load(tmp_path):
    LSTMLMConfig(hidden_size=8).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["hidden_dropout"] = 3.0
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"`hidden_dropout` must be in \[0, 1\), got 3.0"):
        AutoConfig.from_pretrained(tmp_path)
