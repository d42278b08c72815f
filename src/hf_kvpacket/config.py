"""`KVPacketConfig`: the hyperparameters of a header/trailer adapter, saved as `adapter_config.json` (peft style)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import AdapterConfigError, KVPacketError

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_TYPE = "KV_PACKET"
#: Upper bounds that catch a mistyped config before it allocates (e.g. 1e9 soft tokens would ask for 256 GB).
MAX_SOFT_TOKENS = 4096
MAX_HIDDEN_SIZE = 1 << 16
DTYPES = ("float32", "bfloat16", "float16", "float64")
#: Config fields that identify a base model independently of its dtype and of the folder it was loaded from.
ARCHITECTURE_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                     "vocab_size", "intermediate_size")


def model_architecture(model: Any) -> dict[str, Any]:
    """The identifying fields of a model's (text) config (see `ARCHITECTURE_KEYS`)."""
    from .model_structure import text_config

    cfg = text_config(model)
    return {k: getattr(cfg, k) for k in ARCHITECTURE_KEYS if getattr(cfg, k, None) is not None}


@dataclass
class KVPacketConfig:
    """Configuration of a KV Packet adapter (header/trailer soft tokens).

    Every document is encoded alone as `[header | document | trailer]`; header and trailer are `num_header_tokens` and
    `num_trailer_tokens` trainable input embeddings of the base model's hidden size, shared by all documents.

    Example
    -------
    >>> from hf_kvpacket import KVPacketConfig
    >>> cfg = KVPacketConfig(base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct", hidden_size=576)
    >>> cfg.num_header_tokens, cfg.num_trailer_tokens
    (8, 8)
    """

    hidden_size: int = field(metadata={"help": "Hidden size of the base model (width of each soft token)."})
    num_header_tokens: int = field(default=8, metadata={"help": "Soft tokens placed before every document."})
    num_trailer_tokens: int = field(default=8, metadata={"help": "Soft tokens placed after every document."})
    init: str = field(
        default="embedding_stats",
        metadata={"help": "'embedding_stats' (normal with the embedding matrix's mean/std), 'zeros' or 'normal'."},
    )
    init_std: float = field(default=0.02, metadata={"help": "Standard deviation for init='normal'."})
    base_model_name_or_path: str | None = field(default=None, metadata={"help": "Hub id or path of the base model."})
    base_model_fingerprint: str | None = field(
        default=None, metadata={"help": "Content fingerprint of the base model the adapter was trained for."}
    )
    task: str | None = field(default=None, metadata={"help": "Task family the adapter was trained on."})
    torch_dtype: str = field(default="float32", metadata={"help": "dtype of the stored soft tokens."})
    adapter_type: str = field(default=ADAPTER_TYPE, metadata={"help": "Type tag (always KV_PACKET)."})
    library_version: str | None = field(default=None, metadata={"help": "hf_kvpacket version that saved it."})
    base_model_architecture: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Identifying config fields of the base model (model_type, layers, sizes): an adapter loaded "
                          "onto another model is refused even when the hidden sizes agree."},
    )

    def __post_init__(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.hidden_size) or not 0 < self.hidden_size <= MAX_HIDDEN_SIZE:
            raise AdapterConfigError(f"hidden_size must be an integer in 1..{MAX_HIDDEN_SIZE}, got {self.hidden_size!r}.")
        for name in ("num_header_tokens", "num_trailer_tokens"):
            value = getattr(self, name)
            if not is_int(value) or not 0 <= value <= MAX_SOFT_TOKENS:
                raise AdapterConfigError(f"{name} must be an integer in 0..{MAX_SOFT_TOKENS}, got {value!r}.")
        if self.init not in ("embedding_stats", "zeros", "normal"):
            raise AdapterConfigError(f"init must be one of 'embedding_stats', 'zeros', 'normal'; got {self.init!r}.")
        if isinstance(self.init_std, bool) or not isinstance(self.init_std, (int, float)) or not 0 <= self.init_std < 1e3:
            raise AdapterConfigError(f"init_std must be a finite number >= 0, got {self.init_std!r}.")
        if self.torch_dtype not in DTYPES:
            raise AdapterConfigError(f"torch_dtype must be one of {DTYPES}, got {self.torch_dtype!r}.")
        for name in ("base_model_name_or_path", "base_model_fingerprint", "task", "library_version"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise AdapterConfigError(f"{name} must be a string or null, got {getattr(self, name)!r}.")
        if self.base_model_architecture is not None and not isinstance(self.base_model_architecture, dict):
            raise AdapterConfigError(f"base_model_architecture must be an object, got {self.base_model_architecture!r}.")
        if self.adapter_type != ADAPTER_TYPE:
            raise AdapterConfigError(f"adapter_type must be {ADAPTER_TYPE!r}, got {self.adapter_type!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `adapter_config.json` (sorted, indented JSON, stamped with the library version)."""
        from .version import __version__

        os.makedirs(save_directory, exist_ok=True)
        data = self.to_dict()
        data["library_version"] = __version__
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KVPacketConfig":
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict):
            raise AdapterConfigError(f"{CONFIG_NAME} must hold a JSON object, got {type(data).__name__}.")
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("Ignoring unknown keys in %s: %s", CONFIG_NAME, unknown)
        missing = [f.name for f in fields(cls) if f.name == "hidden_size" and f.name not in data]
        if missing:
            raise AdapterConfigError(f"{CONFIG_NAME} lacks required keys {missing}.")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, revision: str | None = None, **hub_kwargs: Any):
        """Read `adapter_config.json` from a local folder or a Hub repo (downloaded through huggingface_hub)."""
        path = str(path_or_repo_id)
        file = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(file):
            from huggingface_hub import hf_hub_download

            file = hf_hub_download(path, CONFIG_NAME, revision=revision, **hub_kwargs)
        try:
            with open(file, encoding="utf-8") as f:
                data = json.load(f)
            return cls.from_dict(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AdapterConfigError(f"{file}: not valid JSON ({e}). Restore the file (or re-download the adapter).") \
                from e
        except KVPacketError as e:
            raise AdapterConfigError(f"{file}: {e} Fix the file (or re-download the adapter).") from e
