"""Re-export of the tiny test models (they live in the package for examples and docs)."""

from hf_kvpacket.testing import *  # noqa: F401,F403
from hf_kvpacket.testing import ARCHS, COMMON, REFUSED, ToyTokenizer, build, float64_rotary  # noqa: F401
