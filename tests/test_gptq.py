"""GPTQ int4 for real on CPU: quantize the tiny Llama once per run with `chatbot.quantize`
(what `chatbot quantize` runs), load it through the registry with `engine: transformers`,
and run LangChain's standard integration suite on it."""

from __future__ import annotations

import importlib.util
import json

import pytest

from chatbot import factory
from chatbot.quantize import is_gptq_checkpoint, load_calibration, quantize
from tests import test_standard_local as standard
from tests.extra_models import extra_models
from tests.structured_cases import MODES, SAMPLED, SCHEMAS, local_sweep, short_budgets

if importlib.util.find_spec("gptqmodel") is None or importlib.util.find_spec("optimum") is None:
    pytest.skip("gptqmodel/optimum not installed (pip install '.[gptq]')", allow_module_level=True)


@pytest.fixture(scope="module")
def gptq_dir(models_root, tmp_path_factory):
    """tiny-llama quantized to 4 bits by the `chatbot quantize` command (~25-90 s here)."""
    from typer.testing import CliRunner

    from chatbot.cli import app
    from chatbot.quantize import DEFAULT_CALIBRATION

    calibration = tmp_path_factory.mktemp("calib") / "calibration.jsonl"
    calibration.write_text("\n".join(json.dumps({"text": t}) for t in DEFAULT_CALIBRATION))
    dst = models_root / "tiny-gptq"
    args = [
        "quantize",
        str(models_root / "tiny-llama"),
        str(dst),
        "--bits",
        "4",
        "--group-size",
        "128",
        "--calibration",
        str(calibration),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "GPTQ 4-bit checkpoint written" in result.output
    return dst


@pytest.fixture(scope="module", autouse=True)
def gptq_registry(_registry, gptq_dir, models_root):
    models = {
        "tiny-gptq": {
            "path": "tiny-gptq",
            "engines": ["transformers"],
            "defaults": {"temperature": 0, "max_tokens": 16},
            "options": {"device": "cpu"},
        }
    }
    with extra_models(models, models_root) as registry:
        yield registry


def test_checkpoint_is_gptq_int4(gptq_dir, models_root) -> None:
    config = json.loads((gptq_dir / "config.json").read_text())
    qc = config["quantization_config"]
    assert is_gptq_checkpoint(gptq_dir)
    assert qc["bits"] == 4 and qc["group_size"] == 128
    assert (gptq_dir / "chat_template.jinja").exists()
    size = (gptq_dir / "model.safetensors").stat().st_size
    assert size < (models_root / "tiny-llama" / "model.safetensors").stat().st_size / 2


def test_loads_int4_layers_through_the_registry() -> None:
    engine = factory.get_engine("tiny-gptq")
    assert factory.picked["tiny-gptq"][0] == "transformers"
    model = engine.runtime.model
    q_proj = model.model.layers[0].self_attn.q_proj
    assert hasattr(q_proj, "qweight") and q_proj.bits == 4  # a gptqmodel int4 kernel
    out = engine.chat_model(max_tokens=8).invoke("hello")
    assert out.content and out.usage_metadata["output_tokens"] > 0


def test_calibration_file_formats(tmp_path) -> None:
    (tmp_path / "c.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    (tmp_path / "c.json").write_text('["a", {"text": "b"}]')
    (tmp_path / "c.txt").write_text("first paragraph\nstill first\n\nsecond\n")
    assert load_calibration(tmp_path / "c.jsonl") == ["one", "two"]
    assert load_calibration(tmp_path / "c.json") == ["a", "b"]
    assert load_calibration(tmp_path / "c.txt") == ["first paragraph\nstill first", "second"]


class TestGPTQIntegration(standard.TestLocalIntegration):
    """The same standard suite (and the same known limits of random weights) as the
    transformers engine, on this model."""

    @property
    def chat_model_params(self) -> dict:
        return {**super().chat_model_params, "model": "tiny-gptq"}


def test_quantize_refuses_a_non_model_directory(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        quantize(tmp_path, tmp_path / "out")


def test_structured_sweep_on_gptq() -> None:
    """Issue 13's sweep on the GPTQ engine: every schema as json_schema and as a forced
    call, at the shortest reply and 12 tokens more, sampled at temperature 1: each reply
    parses and validates; one token below the shortest is refused naming max_tokens."""
    chat = factory.get_engine("tiny-gptq").chat_model()
    tally, refused = local_sweep(chat, "gptq/tiny", SAMPLED, short_budgets)
    print(tally.report())
    assert tally.cases == len(MODES) * len(SCHEMAS) * 2 * 2 and tally.invalid == 0, tally.report()
    assert refused == len(MODES) * len(SCHEMAS)
