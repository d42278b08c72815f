"""Version bridges for transformers 5.x.

transformers 5.24 renamed the cache argument of `generate()` and of every model forward from `past_key_values=` to
`cache=` (the old name warns, and goes in 5.40/6.0), and model outputs carry `.cache`. Older 5.x releases only know
`past_key_values`. We detect the name once and use it everywhere, so neither side ever warns.
"""

from __future__ import annotations

import functools
from typing import Any

import transformers
from packaging.version import Version

_RENAME_VERSION = Version("5.24.0.dev0")


@functools.lru_cache(maxsize=None)
def cache_kwarg_name() -> str:
    """The keyword under which the installed transformers expects a cache (`"cache"` or `"past_key_values"`)."""
    return "cache" if Version(transformers.__version__) >= _RENAME_VERSION else "past_key_values"


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """`{"cache": cache}` or `{"past_key_values": cache}`, whichever the installed transformers expects."""
    return {cache_kwarg_name(): cache}


def output_cache(outputs: Any) -> Any:
    """The cache carried by a model output, read under the installed version's name (no deprecation warning)."""
    return outputs[cache_kwarg_name()] if cache_kwarg_name() in outputs else None
