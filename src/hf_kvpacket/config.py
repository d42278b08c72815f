"""`KVPacketConfig`: the hyperparameters of a header/trailer adapter, saved as `adapter_config.json` (peft style)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import KVPacketError

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_TYPE = "KV_PACKET"


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

    def __post_init__(self) -> None:
        if self.hidden_size <= 0:
            raise KVPacketError(f"hidden_size must be positive, got {self.hidden_size}.")
        for name in ("num_header_tokens", "num_trailer_tokens"):
            if getattr(self, name) < 0:
                raise KVPacketError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.init not in ("embedding_stats", "zeros", "normal"):
            raise KVPacketError(f"init must be one of 'embedding_stats', 'zeros', 'normal'; got {self.init!r}.")
        if self.adapter_type != ADAPTER_TYPE:
            raise KVPacketError(f"adapter_type must be {ADAPTER_TYPE!r}, got {self.adapter_type!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `adapter_config.json` (sorted, indented JSON, stamped with the library version)."""
        from . import __version__

        os.makedirs(save_directory, exist_ok=True)
        data = self.to_dict()
        data["library_version"] = __version__
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KVPacketConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("Ignoring unknown keys in %s: %s", CONFIG_NAME, unknown)
        missing = [f.name for f in fields(cls) if f.name == "hidden_size" and f.name not in data]
        if missing:
            raise TypeError(f"{CONFIG_NAME} lacks required keys {missing}.")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, revision: str | None = None, **hub_kwargs: Any):
        """Read `adapter_config.json` from a local folder or a Hub repo (downloaded through huggingface_hub)."""
        path = str(path_or_repo_id)
        file = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(file):
            from huggingface_hub import hf_hub_download

            file = hf_hub_download(path, CONFIG_NAME, revision=revision, **hub_kwargs)
        with open(file, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
