"""The connector's scheduler side with stand-in requests: prefix hits, preemption (blocks filled again) and aborted
requests, checked without running an engine."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace as NS

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM not installed: run `make test-vllm`", allow_module_level=True)

import torch  # noqa: E402
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole  # noqa: E402

from hf_kvpacket import PacketAdapter, PacketStore  # noqa: E402
from hf_kvpacket.prompt import PromptTemplate  # noqa: E402
from hf_kvpacket.testing import ToyTokenizer, build  # noqa: E402
from hf_kvpacket.vllm import PARAMS_KEY, PacketPromptBuilder  # noqa: E402
from hf_kvpacket.vllm.connector import KVPacketConnector, PacketWorkerMetadata  # noqa: E402

BS = 4  # block size


@pytest.fixture
def env(tmp_path):
    model = build("llama")
    store = PacketStore(str(tmp_path), model, ToyTokenizer(), PacketAdapter.for_model(model, 2, 2, seed=0))
    builder = PacketPromptBuilder(store, PromptTemplate(preamble="sys", query_template="q {question} a"))
    cfg = builder.kv_transfer_config()
    vllm_config = NS(kv_transfer_config=NS(kv_connector_extra_config=cfg["kv_connector_extra_config"]),
                     cache_config=NS(block_size=BS), model_config=NS(hf_config=model.config, dtype=torch.float32))
    conn = KVPacketConnector(vllm_config, KVConnectorRole.SCHEDULER, None)
    req = builder.build(["one two three", "four five six seven"], "who")
    request = NS(request_id="r1", kv_transfer_params=req.kv_transfer_params, prompt_token_ids=req.prompt_token_ids)
    return conn, req, request


def _sched(new=(), cached=()):
    return NS(scheduled_new_reqs=[NS(req_id=r, block_ids=(b,)) for r, b in new],
              scheduled_cached_reqs=NS(req_ids=[r for r, _ in cached], resumed_req_ids={r for r, _ in cached},
                                       new_block_ids=[(b,) for _, b in cached]))


def _allocate_and_schedule(conn, req, request, blocks=(1, 2, 3, 4, 5, 6)):
    """One scheduling step of a new request: offered tokens, block allocation, metadata for the worker."""
    n = req.num_packet_tokens
    conn.get_num_new_matched_tokens(request, 0)
    conn.update_state_after_alloc(request, None, n)
    return conn.build_connector_meta(_sched(new=[(request.request_id, list(blocks))])).loads


def test_new_request_offers_its_packet_tokens_and_loads_into_its_blocks(env):
    conn, req, request = env
    n = req.num_packet_tokens
    assert conn.get_num_new_matched_tokens(request, 0) == (n, False)
    conn.update_state_after_alloc(request, None, n)
    blocks = list(range(10, 10 + -(-len(req.prompt_token_ids) // BS)))
    (load,) = conn.build_connector_meta(_sched(new=[("r1", blocks)])).loads
    assert (load.req_id, load.start, load.block_ids, load.transfer) == ("r1", 0, blocks, req.transfer)
    conn.update_connector_output(NS(kv_connector_worker_meta=PacketWorkerMetadata(
        {"r1": {"status": "loaded", "reason": "", "packet_tokens": n, "loaded_tokens": n}})))
    assert conn.request_finished(request, blocks) == (False, {PARAMS_KEY: {
        "status": "loaded", "reason": "", "packet_tokens": n, "loaded_tokens": n}})


def test_a_prefix_cache_hit_loads_only_the_rest(env):
    conn, req, request = env
    n = req.num_packet_tokens
    assert conn.get_num_new_matched_tokens(request, BS) == (n - BS, False)
    conn.update_state_after_alloc(request, None, n - BS)
    (load,) = conn.build_connector_meta(_sched(new=[("r1", [5, 6, 7, 8, 9, 10])])).loads
    assert load.start == BS
    # everything already cached: nothing to load, and the output says where the packets came from
    conn2_request = NS(**{**vars(request), "request_id": "r2"})
    assert conn.get_num_new_matched_tokens(conn2_request, 4 * BS * 10) == (0, False)
    assert conn.request_finished(conn2_request, [])[1][PARAMS_KEY]["status"] == "prefix_cached"


def test_a_preempted_request_is_filled_again_in_its_new_blocks(env):
    conn, req, request = env
    n = req.num_packet_tokens
    _allocate_and_schedule(conn, req, request)
    # preempted: blocks freed; rescheduled from the waiting queue with all-new blocks
    assert conn.get_num_new_matched_tokens(request, 0) == (n, False)
    conn.update_state_after_alloc(request, None, n)
    (load,) = conn.build_connector_meta(_sched(cached=[("r1", [40, 41, 42, 43, 44, 45])])).loads
    assert load.block_ids == [40, 41, 42, 43, 44, 45] and load.start == 0


def test_an_aborted_request_reports_it_was_not_loaded_and_leaves_no_state(env):
    conn, req, request = env
    conn.get_num_new_matched_tokens(request, 0)
    conn.update_state_after_alloc(request, None, req.num_packet_tokens)
    _, params = conn.request_finished(request, [])  # aborted before its first step
    assert params[PARAMS_KEY]["status"] == "not_loaded"
    assert conn.build_connector_meta(_sched(new=[("r1", [1, 2, 3])])).loads == []
    assert not (conn._checked or conn._pending or conn._starts or conn._status or conn._dispatched)


def test_a_request_finishing_in_its_load_step_reports_the_load_and_late_results_are_dropped(env):
    """vLLM finishes requests (e.g. max_tokens=1) before it hands the connector that step's worker results."""
    conn, req, request = env
    n = req.num_packet_tokens
    _allocate_and_schedule(conn, req, request)
    st = conn.request_finished(NS(**vars(request), status=NS(name="FINISHED_LENGTH_CAPPED")), [])[1][PARAMS_KEY]
    assert st == {"status": "loaded", "reason": "", "packet_tokens": n, "loaded_tokens": n}
    conn.update_connector_output(NS(kv_connector_worker_meta=PacketWorkerMetadata({"r1": {"status": "loaded"}})))
    assert not (conn._checked or conn._pending or conn._starts or conn._status or conn._dispatched)
    # with kv_load_failure_policy="fail" a failed load ends the request with an error status
    _allocate_and_schedule(conn, req, request)
    st = conn.request_finished(NS(**vars(request), status=NS(name="FINISHED_ERROR")), [])[1][PARAMS_KEY]
    assert st["status"] == "failed"


def test_requests_without_packets_are_left_alone(env):
    conn, _, _ = env
    plain = NS(request_id="p", kv_transfer_params=None, prompt_token_ids=[1, 2, 3])
    assert conn.get_num_new_matched_tokens(plain, 0) == (0, False)
    assert conn.request_finished(plain, []) == (False, None)


def test_missing_files_and_a_prompt_without_query_are_refused_before_any_block(env, tmp_path):
    conn, req, request = env
    short = NS(request_id="s", kv_transfer_params=req.kv_transfer_params,
               prompt_token_ids=req.prompt_token_ids[: req.num_packet_tokens])
    assert conn.get_num_new_matched_tokens(short, 0) == (0, False)
    assert "at least the last prompt token" in conn.request_finished(short, [])[1][PARAMS_KEY]["reason"]
    import os

    os.remove(os.path.join(conn.root, req.transfer.keys[1][:2], req.transfer.keys[1] + ".safetensors"))
    assert conn.get_num_new_matched_tokens(request, 0) == (0, False)
    st = conn.request_finished(request, [])[1][PARAMS_KEY]
    assert st["status"] == "refused" and "no such packet" in st["reason"]


def test_worker_results_aggregate_with_failures_winning():
    a = PacketWorkerMetadata({"r": {"status": "loaded"}, "s": {"status": "loaded"}})
    b = PacketWorkerMetadata({"r": {"status": "failed", "reason": "checksum"}})
    assert a.aggregate(b).results == {"r": {"status": "failed", "reason": "checksum"}, "s": {"status": "loaded"}}
