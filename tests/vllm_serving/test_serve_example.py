"""examples/vllm_serve.py end to end: `vllm serve` (the OpenAI-compatible server) with the connector on localhost,
one completion request with packets, token-identical to PacketCache + generate."""

import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM not installed: run `make test-vllm`", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_serve_example_answers_from_packets_like_packet_cache(tmp_path):
    env = {**os.environ, "VLLM_RPC_BASE_PATH": str(tmp_path), "VLLM_CACHE_ROOT": str(tmp_path / "cache"),
           "VLLM_CPU_KVCACHE_SPACE": "1"}
    adapter = os.path.join(ROOT, "adapters", "smollm2-135m-instruct-mixture")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "vllm_serve.py"), "--adapter", adapter,
                           "--check", "--store", str(tmp_path / "packets")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-5000:]
    assert "'status': 'loaded'" in out and "token-identical" in out, out
