"""`PacketAdapter`: the trainable header/trailer soft tokens that make independently encoded packets composable."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import CONFIG_NAME, WEIGHTS_NAME, KVPacketConfig, model_architecture
from .errors import AdapterConfigError, KVPacketError
from .fingerprint import model_fingerprint, tensors_fingerprint

NO_ADAPTER = "none"
logger = logging.getLogger(__name__)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _looks_local(path: str) -> bool:
    """A path a user meant as a folder on disk (not a Hub repo id): absolute, relative with ./ ../ ~, a trailing or
    backslash separator, several components, or a first component that exists here (e.g. `adapters/...`)."""
    if os.path.isabs(path) or path.startswith(("./", "../", "~", ".\\")) or path.endswith(("/", "\\")):
        return True
    if "\\" in path or path.count("/") > 1 or not _HUB_ID.match(path):
        return True
    return "/" in path and os.path.isdir(path.split("/")[0])


class PacketAdapter(nn.Module):
    """Header and trailer soft tokens (input embeddings) wrapped around every document: `[header | doc | trailer]`.

    Nothing of the base model is trained; the adapter holds only `(num_header_tokens + num_trailer_tokens) x hidden`
    parameters (e.g. 16 x 576 floats, ~37 KB, for SmolLM2-135M).

    Example
    -------
    >>> adapter = PacketAdapter.for_model(model)                  # initialised from the embedding statistics
    >>> adapter.save_pretrained("my-adapter")                      # adapter_config.json + weights + README.md card
    >>> adapter = PacketAdapter.from_pretrained("my-adapter")      # or a Hub repo id
    """

    def __init__(self, config: KVPacketConfig):
        super().__init__()
        self.config = config
        self.allow_other_base_model = False
        dtype = getattr(torch, config.torch_dtype)
        self.header = nn.Parameter(torch.zeros(config.num_header_tokens, config.hidden_size, dtype=dtype))
        self.trailer = nn.Parameter(torch.zeros(config.num_trailer_tokens, config.hidden_size, dtype=dtype))
        if config.init == "normal":
            with torch.no_grad():
                self.header.normal_(0.0, config.init_std)
                self.trailer.normal_(0.0, config.init_std)

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        num_header_tokens: int = 8,
        num_trailer_tokens: int = 8,
        init: str = "embedding_stats",
        seed: int | None = 0,
        **config_kwargs: Any,
    ) -> "PacketAdapter":
        """A fresh adapter sized for `model`, initialised from its input embeddings' mean and std (paper recipe)."""
        embeddings = model.get_input_embeddings()
        hidden = embeddings.weight.shape[1]
        config = KVPacketConfig(
            hidden_size=hidden,
            num_header_tokens=num_header_tokens,
            num_trailer_tokens=num_trailer_tokens,
            init=init,
            base_model_name_or_path=getattr(getattr(model, "config", None), "_name_or_path", None) or None,
            base_model_fingerprint=model_fingerprint(model),
            base_model_architecture=model_architecture(model),
            **config_kwargs,
        )
        adapter = cls(config)
        if init == "embedding_stats":
            adapter.init_from_embeddings(model, seed=seed)
        return adapter

    @torch.no_grad()
    def init_from_embeddings(self, model: nn.Module, seed: int | None = 0, sample: int = 4096) -> None:
        """Draw every soft token from N(mean, std) of the model's embedding *outputs* (per hidden dimension).

        Embedding outputs rather than the raw matrix, so models that scale embeddings (Gemma) get the right range.
        """
        embeddings = model.get_input_embeddings()
        vocab = embeddings.weight.shape[0]
        gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
        ids = torch.randperm(vocab, generator=gen)[: min(sample, vocab)].to(embeddings.weight.device)
        out = embeddings(ids).float().cpu()
        mean, std = out.mean(0), out.std(0)
        for p in (self.header, self.trailer):
            noise = torch.randn(p.shape, generator=gen)
            p.copy_((mean + std * noise).to(p.dtype))

    @torch.no_grad()
    def widened(self, model: nn.Module, num_header_tokens: int, num_trailer_tokens: int,
                seed: int | None = 0) -> "PacketAdapter":
        """A copy with more slots that keeps every trained one where it sees the document from.

        New header slots go in front of the trained ones and new trailer slots after them, so the trained slots keep
        their distances to the document (RoPE sees relative positions); the new slots are drawn like a fresh
        adapter's (:meth:`init_from_embeddings`). The warm start for "try 16+16 slots when 8+8 plateaus".

        >>> wide = adapter.widened(model, 16, 16)  # doctest: +SKIP
        """
        old_h, old_t = self.num_header_tokens, self.num_trailer_tokens
        if num_header_tokens < old_h or num_trailer_tokens < old_t:
            raise ValueError(f"widened() adds slots: the adapter has {old_h}+{old_t}, asked for "
                             f"{num_header_tokens}+{num_trailer_tokens} (train a fresh adapter for fewer slots).")
        fresh = PacketAdapter.for_model(model, num_header_tokens - old_h, num_trailer_tokens - old_t, seed=seed)
        config = KVPacketConfig.from_dict({**self.config.to_dict(), "num_header_tokens": num_header_tokens,
                                           "num_trailer_tokens": num_trailer_tokens})
        out = PacketAdapter(config)
        out.header.copy_(torch.cat([fresh.header.to(self.header.dtype), self.header]))
        out.trailer.copy_(torch.cat([self.trailer, fresh.trailer.to(self.trailer.dtype)]))
        out.allow_other_base_model = self.allow_other_base_model
        return out

    # ------------------------------------------------------------------ use
    @property
    def num_header_tokens(self) -> int:
        return self.config.num_header_tokens

    @property
    def num_trailer_tokens(self) -> int:
        return self.config.num_trailer_tokens

    @property
    def fingerprint(self) -> str:
        """Changes with every weight (a trained and an untrained adapter never share packets)."""
        cfg = self.config
        extra = f"{cfg.num_header_tokens}|{cfg.num_trailer_tokens}|{cfg.hidden_size}"
        return tensors_fingerprint({"header": self.header, "trailer": self.trailer}, extra=extra)

    def wrap(self, document_embeds: torch.Tensor) -> torch.Tensor:
        """`[header | document | trailer]` for document embeddings of shape `(batch, seq_len, hidden)`.

        Returns `(batch, num_header_tokens + seq_len + num_trailer_tokens, hidden)` in the documents' dtype.
        """
        b = document_embeds.shape[0]
        dt, dev = document_embeds.dtype, document_embeds.device
        head = self.header.to(device=dev, dtype=dt).unsqueeze(0).expand(b, -1, -1)
        tail = self.trailer.to(device=dev, dtype=dt).unsqueeze(0).expand(b, -1, -1)
        return torch.cat([head, document_embeds, tail], dim=1)

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model whose hidden size differs from the adapter's, or (same hidden size) another base model.

        The base model is identified by its config (`KVPacketConfig.base_model_architecture`: model type, layers,
        heads, vocabulary, sizes), not by dtype or folder. `PacketAdapter.from_pretrained(...,
        allow_other_base_model=True)` turns the refusal into a warning (e.g. a fine-tune of the base with the same
        architecture; its packets are still keyed by its own fingerprint). Adapters saved before the field existed
        are compared by base-model name, with a warning only.
        """
        hidden = model.get_input_embeddings().weight.shape[1]
        if hidden != self.config.hidden_size:
            raise KVPacketError(
                f"This adapter has hidden size {self.config.hidden_size} but the model has {hidden}: it was trained "
                f"for {self.config.base_model_name_or_path!r}. Load the adapter made for your model."
            )
        want, key = self.config.base_model_architecture, id(model)
        if key in getattr(self, "_checked", set()):
            return
        if want:
            have = model_architecture(model)
            diff = {k: (v, have.get(k)) for k, v in want.items() if have.get(k) != v}
            if diff:
                message = (f"This adapter was trained for {self.config.base_model_name_or_path!r}, a model that differs "
                           f"from the one given in {', '.join(f'{k} ({a} vs {b})' for k, (a, b) in diff.items())}. "
                           "Soft tokens trained for one model are noise to another: load the adapter made for your "
                           "model")
                if not self.allow_other_base_model:
                    raise AdapterConfigError(message + " (or pass allow_other_base_model=True to from_pretrained).")
                logger.warning(message + "; using it anyway (allow_other_base_model=True).")
        else:
            name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
            base = self.config.base_model_name_or_path
            if base and name and not os.path.isdir(name) and name.lower() != base.lower():
                logger.warning("This adapter was trained for %r but the model is %r.", base, name)
        self.__dict__.setdefault("_checked", set()).add(key)

    # ------------------------------------------------------------------ artifacts
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        model_card: bool = True,
        eval_results: dict[str, Any] | None = None,
        training_args: dict[str, Any] | None = None,
        datasets: list[str] | None = None,
    ) -> None:
        """Write `adapter_config.json`, `adapter_model.safetensors` and a generated `README.md` model card.

        A README.md that a person edited (no generated-card marker) is never overwritten.
        """
        from .model_card import write_model_card

        os.makedirs(save_directory, exist_ok=True)
        self.config.save_pretrained(save_directory)
        tensors = {"header": self.header.detach().cpu().contiguous(), "trailer": self.trailer.detach().cpu().contiguous()}
        meta = {"format": "pt", "adapter_type": self.config.adapter_type, "fingerprint": self.fingerprint}
        save_file(tensors, os.path.join(save_directory, WEIGHTS_NAME), metadata=meta)
        if model_card:
            write_model_card(self.config, self.fingerprint, save_directory, eval_results=eval_results, training_args=training_args, datasets=datasets)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        revision: str | None = None,
        device: str | torch.device | None = None,
        allow_other_base_model: bool = False,
        **hub_kwargs: Any,
    ) -> "PacketAdapter":
        """Load from a local folder or a Hub repo id (with `revision`), through huggingface_hub's download cache.

        Everything is validated before use: config types and ranges, weights against the config (names, shapes,
        finite values). `allow_other_base_model=True` accepts using it on a model other than the one it was trained
        for (warned; see `check_model`).
        """
        path = str(path_or_repo_id)
        if os.path.isdir(path):
            config_file, weights_file = os.path.join(path, CONFIG_NAME), os.path.join(path, WEIGHTS_NAME)
            for f in (config_file, weights_file):
                if not os.path.isfile(f):
                    raise KVPacketError(f"{path!r} is not a KV Packet adapter folder: {os.path.basename(f)} is missing.")
        elif _looks_local(path):
            raise AdapterConfigError(
                f"No such local folder: {path!r} (looked in {os.path.abspath(os.path.expanduser(path))}). Check the "
                "path; a Hub repo id looks like 'namespace/name'."
            )
        else:
            from huggingface_hub import hf_hub_download

            config_file = hf_hub_download(path, CONFIG_NAME, revision=revision, **hub_kwargs)
            weights_file = hf_hub_download(path, WEIGHTS_NAME, revision=revision, **hub_kwargs)
        config = KVPacketConfig.from_pretrained(os.path.dirname(config_file))
        adapter = cls(config)
        adapter.allow_other_base_model = allow_other_base_model
        try:
            state = load_file(weights_file)
        except Exception as e:  # safetensors raises its own error types for garbled files
            raise AdapterConfigError(f"{weights_file}: unreadable weights ({e}). Re-download or re-save the adapter.") \
                from e
        extra = sorted(set(state) - {"header", "trailer"})
        if extra:
            raise AdapterConfigError(f"{weights_file}: unexpected tensors {extra}; an adapter holds header and trailer.")
        for name in ("header", "trailer"):
            expected = tuple(getattr(adapter, name).shape)
            if name not in state or tuple(state[name].shape) != expected:
                got = tuple(state[name].shape) if name in state else None
                raise AdapterConfigError(f"{weights_file}: tensor {name!r} has shape {got}, the config says {expected}.")
            t = state[name]
            if not t.is_floating_point():
                raise AdapterConfigError(f"{weights_file}: tensor {name!r} is {t.dtype}, soft tokens are floating point.")
            bad = (~torch.isfinite(t)).sum().item()
            if bad:
                raise AdapterConfigError(
                    f"{weights_file}: tensor {name!r} holds {bad} NaN/Inf values (a diverged training run?). Use an "
                    "earlier checkpoint."
                )
        adapter.load_state_dict(state)
        if device is not None:
            adapter.to(device)
        return adapter

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        commit_message: str = "Upload KV Packet adapter",
        token: str | None = None,
        revision: str | None = None,
        **save_kwargs: Any,
    ) -> str:
        """Create the repo if needed, save to a temporary folder and upload it in one commit. Returns the commit URL."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, **save_kwargs)
            info = api.upload_folder(
                repo_id=repo_id, folder_path=tmp, commit_message=commit_message, revision=revision, repo_type="model"
            )
        return str(getattr(info, "commit_url", info))


def adapter_fingerprint(adapter: PacketAdapter | None) -> str:
    """The adapter's fingerprint, or `"none"` for packets encoded without one (no recompute)."""
    return NO_ADAPTER if adapter is None else adapter.fingerprint
