"""The settings: read once from the environment, defaults as measured, every bad value one sentence."""

from __future__ import annotations

import ast

import pytest

from sdxl_worker.contract.job_schema import DEFAULT_MAX_PIXELS
from sdxl_worker.settings import DEFAULT_MODEL_PATH, Settings, SettingsError, environment_fields, setting_from_env
from sdxl_worker.speed.options import SpeedOptions
from tests.helpers import ROOT


def test_defaults_are_the_measured_ones() -> None:
    settings = Settings.from_env({})
    assert (settings.model_path, settings.device, settings.max_pixels, settings.log_level) == (
        DEFAULT_MODEL_PATH, "auto", DEFAULT_MAX_PIXELS, "INFO")
    assert settings.speed == SpeedOptions(attention_backend="sdpa", fuse_qkv=True, channels_last=True,
                                          vae_dtype="auto", cudnn_benchmark=False, compile=False,
                                          compile_mode="default", compile_scope="full", compile_cache_dir=None,
                                          cuda_graphs=None, quantize="none")


def test_env_overrides() -> None:
    settings = Settings.from_env({
        "MODEL_PATH": "/runpod-volume/other", "DEVICE": "cuda:1", "MAX_PIXELS": "4194304", "LOG_LEVEL": "debug",
        "FUSE_QKV": "0", "CHANNELS_LAST": "false", "VAE_DTYPE": "FP32", "COMPILE": "yes",
        "COMPILE_MODE": "max-autotune-no-cudagraphs", "COMPILE_SCOPE": "Blocks",
        "COMPILE_CACHE_DIR": "/runpod-volume/.cache/torch-compile", "QUANTIZE": "FP8", "ATTENTION_BACKEND": "xformers"})
    assert (settings.model_path, settings.device, settings.max_pixels, settings.log_level) == (
        "/runpod-volume/other", "cuda:1", 4194304, "DEBUG")
    options = settings.speed
    assert (options.fuse_qkv, options.channels_last, options.vae_dtype, options.compile) == (False, False, "fp32",
                                                                                             True)
    assert (options.compile_mode, options.compile_scope) == ("max-autotune-no-cudagraphs", "blocks")
    assert options.compile_cache_dir == "/runpod-volume/.cache/torch-compile"
    assert (options.quantize, options.attention_backend) == ("fp8", "xformers")


def test_empty_variables_take_the_default() -> None:
    assert Settings.from_env({"COMPILE": "", "MAX_PIXELS": "  ", "MODEL_PATH": ""}) == Settings()


@pytest.mark.parametrize(
    ("env", "sentence"),
    [({"COMPILE": "maybe"}, "COMPILE must be 1 or 0, not 'maybe'"),
     ({"VAE_DTYPE": "fp8"}, "VAE_DTYPE must be one of auto, bf16, fp32, not 'fp8'"),
     ({"COMPILE_MODE": "fast"}, "COMPILE_MODE must be one of default, reduce-overhead, max-autotune-no-cudagraphs, "
                                "not 'fast'"),
     ({"COMPILE_SCOPE": "unet"}, "COMPILE_SCOPE must be one of full, blocks, not 'unet'"),
     ({"QUANTIZE": "int4"}, "QUANTIZE must be one of none, fp8, not 'int4'"),
     ({"ATTENTION_BACKEND": "flash"}, "ATTENTION_BACKEND must be one of sdpa, xformers, not 'flash'"),
     ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, not 'LOUD'"),
     ({"MAX_PIXELS": "lots"}, "MAX_PIXELS must be a whole number of at most 18 digits, not 'lots'"),
     ({"MAX_PIXELS": "9" * 5000}, "MAX_PIXELS must be a whole number of at most 18 digits, not "
                                  "'9999999999999999999999999999999999999...'"),
     ({"MAX_PIXELS": "100"}, "MAX_PIXELS='100' is refused: input should be greater than or equal to 65536"),
     ({"LOAD_STREAMS": "many"}, "LOAD_STREAMS must be a whole number of at most 18 digits or auto, not 'many'"),
     ({"LOAD_STREAMS": "65"}, "LOAD_STREAMS='65' is refused: input should be less than or equal to 64"),
     ({"DEVICE": "gpu"}, "DEVICE='gpu' is refused: must be auto, cpu, cuda or cuda:N"),
     ({"QUANTIZE": "x" * 100_000}, "QUANTIZE must be one of none, fp8, not 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...'"),
     ({"CUDA_GRAPHS": "sometimes"}, "CUDA_GRAPHS must be 1, 0 or auto, not 'sometimes'"),
     ({"CUDA_GRAPHS": "1", "COMPILE": "1"}, "CUDA_GRAPHS=1 and COMPILE=1 exclude each other: for compiled code "
                                            "with CUDA graphs, use COMPILE=1 COMPILE_MODE=reduce-overhead"),
     ({"COMPILE": "1", "COMPILE_SCOPE": "blocks", "COMPILE_MODE": "reduce-overhead"},
      "COMPILE_SCOPE=blocks does not work with COMPILE_MODE=reduce-overhead: the repeated blocks share one CUDA "
      "graph, and each overwrites the output the next one reads; use COMPILE_MODE=default with COMPILE_SCOPE=blocks"),
     ({"CUDA_GRAPH_SHAPES": "832x1216x5"}, "CUDA_GRAPH_SHAPES='832x1216x5' is refused: must be `sdxl` or shapes "
      "WIDTHxHEIGHT or WIDTHxHEIGHTxIMAGES (1-4 images) separated by commas, e.g. 832x1216,1216x832x2"),
     ({"CUDA_GRAPH_SHAPES": "1000x1004"}, "CUDA_GRAPH_SHAPES lists 1000x1004, which no job can ask for: sides are "
                                          "multiples of 8 from 256 to 2048"),
     ({"CUDA_GRAPH_SHAPES": "2048x2048"}, "CUDA_GRAPH_SHAPES lists 2048x2048, over MAX_PIXELS=2359296"),
     ({"CUDA_GRAPH_SHAPES": "sdxl", "CUDA_GRAPH_MAX": "8"},
      "CUDA_GRAPH_SHAPES lists 9 shapes but CUDA_GRAPH_MAX keeps 8 graphs: raise CUDA_GRAPH_MAX or list fewer shapes")],
)
def test_bad_settings_are_one_sentence_naming_the_variable(env: dict, sentence: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == sentence


@pytest.mark.parametrize(("value", "streams"), [("", None), ("auto", None), ("AUTO", None), ("0", 0), ("16", 16)])
def test_load_streams_is_a_number_or_auto(value: str, streams: int | None) -> None:
    assert Settings.from_env({"LOAD_STREAMS": value}).load_streams == streams


@pytest.mark.parametrize(("env", "graphs"), [({}, True), ({"COMPILE": "1"}, False), ({"CUDA_GRAPHS": "auto"}, True),
                                             ({"CUDA_GRAPHS": "0"}, False), ({"CUDA_GRAPHS": "1"}, True),
                                             ({"CUDA_GRAPHS": "0", "COMPILE": "1"}, False)])
def test_cuda_graphs_are_on_unless_compiled_or_turned_off(env: dict, graphs: bool) -> None:
    """Measured faster than eager with the same output (benchmarks/RESULTS.md); a compiled UNet has its own."""
    assert Settings.from_env(env).speed.use_cuda_graphs is graphs


@pytest.mark.parametrize(("value", "shapes"), [
    ("", ()),
    (" 832x1216, 1216X832x2,832x1216 ", ((832, 1216, 1), (1216, 832, 2))),  # spaces, case, repeats
    ("SDXL", ((1024, 1024, 1), (1152, 896, 1), (896, 1152, 1), (1216, 832, 1), (832, 1216, 1), (1344, 768, 1),
              (768, 1344, 1), (1536, 640, 1), (640, 1536, 1))),
])
def test_graph_shapes_are_sizes_and_image_counts(value: str, shapes: tuple) -> None:
    assert Settings.from_env({"CUDA_GRAPH_SHAPES": value}).speed.graph_shapes == shapes


def test_one_setting_reads_alone_whatever_the_others_hold() -> None:
    """The volume check reads MODEL_PATH alone: a bad speed option is the worker's to report, not the check's."""
    env = {"MODEL_PATH": "/runpod-volume/mine", "COMPILE": "maybe"}
    assert setting_from_env("model_path", env) == "/runpod-volume/mine"
    assert setting_from_env("model_path", {}) == DEFAULT_MODEL_PATH
    with pytest.raises(SettingsError, match="LOG_LEVEL must be one of"):
        setting_from_env("log_level", {"LOG_LEVEL": "chatty"})


def test_lora_settings_read_from_their_variables() -> None:
    settings = Settings.from_env({"LORA_DIR": "/runpod-volume/my-loras", "LORA_MAX_PER_JOB": "2", "LORA_CACHE_MB": "0"})
    assert (settings.loras.lora_dir, settings.loras.lora_max_per_job, settings.loras.lora_cache_mb) == (
        "/runpod-volume/my-loras", 2, 0)
    assert setting_from_env("lora_dir", {}) == "/runpod-volume/loras"
    with pytest.raises(SettingsError, match=r"^LORA_MAX_PER_JOB='0' is refused: input should be greater than or "
                                            r"equal to 1$"):
        Settings.from_env({"LORA_MAX_PER_JOB": "0"})


def test_every_setting_has_one_variable_and_a_description() -> None:
    variables = [name for name, _ in environment_fields()]
    assert len(variables) == len(set(variables))
    assert {"MODEL_PATH", "DEVICE", "MAX_PIXELS", "LOG_LEVEL", "ATTENTION_BACKEND", "COMPILE", "CUDA_GRAPHS",
            "QUANTIZE", "COMPILE_CACHE_DIR"} <= set(variables)
    assert all(field.description for _, field in environment_fields())


def test_no_other_module_reads_the_settings_variables() -> None:
    """Settings are read in one place: a variable read elsewhere would bypass the start's checks."""
    variables = {name for name, _ in environment_fields()}
    modules = [*ROOT.glob("*.py"), *(ROOT / "sdxl_worker").rglob("*.py")]
    readers = [f"{path.relative_to(ROOT)}:{line} reads {name}" for path in modules if path.name != "settings.py"
               for line, name in _environment_reads(ast.parse(path.read_text())) if name in variables]
    assert readers == []
    snippet = 'os.environ.get("COMPILE")\nos.environ["DEVICE"]\nos.environ["TRITON_CACHE_DIR"] = "/x"\n'
    assert _environment_reads(ast.parse(snippet)) == [(1, "COMPILE"), (2, "DEVICE")]  # reads, not writes


def _environment_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, variable) of each os.environ.get(...), os.getenv(...) and os.environ[...] read in `tree`."""
    reads = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = ast.unparse(node.func)
            if called in ("os.environ.get", "os.getenv", "environ.get", "getenv"):
                reads.append((node.lineno, node.args[0].value))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and \
                ast.unparse(node.value) in ("os.environ", "environ") and isinstance(node.slice, ast.Constant):
            reads.append((node.lineno, node.slice.value))
    return reads
