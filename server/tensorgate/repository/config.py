"""Model configuration: parse config.pbtxt (protobuf text format) and derive what serving needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tensorgate_protos import model_config_pb2 as mc

from tensorgate.dataplane.reshape import check_reshape
from tensorgate.errors import ModelLoadError
from tensorgate.protocol import datatypes

CONFIG_FILE = "config.pbtxt"
CONFIGS_DIR = "configs"  # named configs, chosen by --model-config-name


def parse_config(text: str, source: str = CONFIG_FILE) -> mc.ModelConfig:
    """Parse config text, turning parser errors into a load error that names the line."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{source} does not parse: {exc}") from None
    return config


def read_config(model_dir: Path, config_name: str = "") -> mc.ModelConfig | None:
    """The model's configs/<config_name>.pbtxt when the name is given and the file exists,
    else its config.pbtxt; None when it has neither."""
    path = model_dir / CONFIG_FILE
    if config_name and (model_dir / CONFIGS_DIR / f"{config_name}.pbtxt").is_file():
        path = model_dir / CONFIGS_DIR / f"{config_name}.pbtxt"
    if not path.is_file():
        return None
    source = path.relative_to(model_dir.parent)
    return parse_config(path.read_text(encoding="utf-8"), str(source))


def parameter_int(config: mc.ModelConfig, key: str, default: int) -> int:
    """A config `parameters` entry read as an integer; absent or empty: `default`."""
    param = config.parameters.get(key)
    if param is None or not param.string_value:
        return default
    try:
        return int(param.string_value)
    except ValueError:
        value = param.string_value
        raise ModelLoadError(f"parameter {key} must be an integer, got {value!r}") from None


def parameter_flag(config: mc.ModelConfig, key: str) -> bool | None:
    """A config `parameters` entry read as true or false; absent or empty: None."""
    param = config.parameters.get(key)
    if param is None or not param.string_value:
        return None
    value = param.string_value.strip().lower()
    if value in ("1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    raise ModelLoadError(f"parameter {key} must be true or false (1 or 0), got {value!r}")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output as the config declares it; dims exclude the batch dimension."""

    name: str
    datatype: datatypes.DataType
    dims: tuple[int, ...]
    optional: bool = False
    # The model file's shape when the config's `reshape` differs from `dims`; None when not.
    reshape: tuple[int, ...] | None = None

    def metadata_shape(self, max_batch_size: int) -> list[int]:
        """Shape as reported in model metadata: -1 leads when the model batches."""
        return ([-1] if max_batch_size > 0 else []) + list(self.dims)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The parts of a ModelConfig that request validation reads, resolved once at load."""

    name: str
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    # The v2 datatype name of every output, built once: a response carries it per output.
    output_datatypes: dict[str, str] = field(default_factory=dict)
    # Inputs the batchers supply (control, state and batch inputs): never the client's.
    supplied: frozenset[str] = frozenset()
    # The inputs with a `reshape`, for the data plane to reshape before the batcher.
    reshaped_inputs: tuple[TensorSpec, ...] = ()
    # Class labels by output (`label_filename`), for the classification extension.
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls, config: mc.ModelConfig, labels: dict[str, tuple[str, ...]] | None = None
    ) -> ModelSpec:
        """Resolve datatypes and dims; a config naming an unsupported type fails the load."""

        def spec(tensor: mc.ModelInput | mc.ModelOutput, optional: bool) -> TensorSpec:
            type_name = mc.DataType.Name(tensor.data_type)
            if type_name not in datatypes.BY_CONFIG_NAME:
                raise ModelLoadError(f"tensor '{tensor.name}' has unsupported type {type_name}")
            dims = tuple(tensor.dims)
            reshape = None
            if tensor.HasField("reshape"):
                kind = "input" if isinstance(tensor, mc.ModelInput) else "output"
                reshape = tuple(tensor.reshape.shape)
                check_reshape(kind, tensor.name, dims, reshape)
                reshape = None if reshape == dims else reshape
            return TensorSpec(
                tensor.name, datatypes.BY_CONFIG_NAME[type_name], dims, optional, reshape
            )

        if config.max_batch_size < 0:
            raise ModelLoadError(f"max_batch_size must be >= 0, got {config.max_batch_size}")
        inputs = {t.name: spec(t, t.optional) for t in config.input}
        outputs = {t.name: spec(t, False) for t in config.output}
        for kind, names, declared in (
            ("input", inputs, config.input),
            ("output", outputs, config.output),
        ):
            if len(names) != len(declared):
                raise ModelLoadError(f"config declares the same {kind} name more than once")
        output_datatypes = {name: t.datatype.name for name, t in outputs.items()}
        batching = config.sequence_batching
        supplied = frozenset(
            [
                *(c.name for c in batching.control_input),
                *(s.input_name for s in batching.state),
                *(name for b in config.batch_input for name in b.target_name),
            ]
        )
        reshaped_inputs = tuple(t for t in inputs.values() if t.reshape is not None)
        return cls(
            config.name,
            config.max_batch_size,
            inputs,
            outputs,
            output_datatypes,
            supplied,
            reshaped_inputs,
            labels or {},
        )
