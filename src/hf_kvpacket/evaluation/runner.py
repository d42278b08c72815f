"""Run methods over evaluation tasks: per-sample JSONL (resumable), then the report (tables, plots, results JSON).

For every task, every example and every method, the runner asks the method for a greedy answer through the shared
:class:`~hf_kvpacket.baselines.MethodContext` (same token ids for all methods; packets encoded once per example,
outside the timed span) and appends one JSON line to `<output>/samples.jsonl`::

    {"task": "niah", "method": "kv_packet", "id": "niah-eval-42-0003", "answer": "8400470", "answers": [...],
     "f1": 1.0, "exact_match": 1.0, "ttft_s": 0.041, "flops": 3.1e10, "recomputed_tokens": 0, ...}

A rerun with `resume=True` skips every (task, method, id) already there, so an interrupted run continues where it
stopped. The report (:func:`~hf_kvpacket.evaluation.report.write_report`) is rebuilt from the JSONL at the end.

Examples
--------
>>> from hf_kvpacket.evaluation.runner import EvalConfig, run_evaluation
>>> summary = run_evaluation(EvalConfig(model="smollm2-135m-instruct", tasks=("biography",), num_samples=10,
...                                     output="results/smoke"))
>>> summary["results"]["biography"]["full_recompute"]["f1"]
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import platform
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..adapter import PacketAdapter
from ..baselines import DEFAULT_METHODS, BaselineMethod, KVPacket, MethodContext, make_method
from ..errors import KVPacketError
from .metrics import exact_match, token_f1
from .report import SAMPLES_FILE, write_report
from ..tasks import MIXTURE_TASKS, load_task

logger = logging.getLogger(__name__)

RUN_CONFIG_FILE = "run_config.json"
#: Settings that must not change between a run and its resumption (answers would not be comparable).
_FROZEN = ("model", "adapter", "seed", "max_new_tokens", "system_prompt", "dtype", "split")


class EvalRunError(KVPacketError):
    """The evaluation cannot start or resume (e.g. existing results without `--resume`, or changed settings)."""


@dataclass
class EvalConfig:
    """Everything that defines an evaluation run (the CLI options of `kvpacket eval`).

    Parameters
    ----------
    model:
        Offline registry name (``"smollm2-135m-instruct"``, ``"qwen2.5-coder-0.5b-instruct"``), local folder or Hub id.
    tasks:
        Task names (:data:`hf_kvpacket.evaluation.TASKS`).
    methods:
        Method specs (``"name"`` or ``"name:knob=value"``, see :func:`hf_kvpacket.baselines.make_method`).
    num_samples:
        Examples per task (eval split).
    adapter:
        Adapter folder or Hub id, ``"random"`` for an untrained one (embedding-statistics init, for smoke tests), or
        `None`. Without an adapter, `kv_packet` is dropped from the default methods.
    seed:
        Dataset seed (the paper uses 42).
    max_new_tokens:
        Greedy generation budget per answer.
    output:
        Results folder.
    resume:
        Continue a previous run in `output` (skip what is done). Without it, existing results are an error.
    system_prompt:
        System message of the chat template (default: the template's own).
    dtype:
        Model dtype name (``"float32"``, ``"bfloat16"``).
    threads:
        `torch.set_num_threads` for the run (`None`: leave torch's default).
    device:
        Where the model runs (``"cpu"``, ``"cuda"``; `None`: cuda when available).
    warmup:
        Run every method once, untimed, before the first timed answer (first calls pay one-time costs).
    split:
        Dataset split (``"eval"``; held-out rule of each task).
    reuse_from:
        Another results folder of the same model, seed, split, budget, system prompt and dtype: answers of methods
        that do not use the adapter (everything but `kv_packet`) are copied from it instead of recomputed, e.g. to
        compare a new adapter against the full-recompute answers of an earlier run. Copied records keep their
        timings and are marked ``"reused_from"``.
    """

    model: str = "smollm2-135m-instruct"
    tasks: Sequence[str] = MIXTURE_TASKS
    methods: Sequence[str] = DEFAULT_METHODS
    num_samples: int = 100
    adapter: str | None = None
    seed: int = 42
    max_new_tokens: int = 32
    output: str = os.path.join("results", "eval")
    resume: bool = False
    system_prompt: str | None = None
    dtype: str = "float32"
    threads: int | None = None
    device: str | None = None
    warmup: bool = True
    split: str = "eval"
    reuse_from: str | None = None
    explicit_methods: bool = field(default=False, repr=False)

    def command(self) -> str:
        """The `kvpacket eval` command line that reproduces this run.

        Examples
        --------
        >>> EvalConfig(tasks=("niah",), num_samples=10, output="results/x").command()
        'kvpacket eval --model smollm2-135m-instruct --tasks niah --methods full_recompute,... --num-samples 10 ...'
        """
        args = ["kvpacket", "eval", "--model", self.model, "--tasks", ",".join(self.tasks), "--methods",
                ",".join(self.methods), "--num-samples", str(self.num_samples), "--seed", str(self.seed),
                "--max-new-tokens", str(self.max_new_tokens)]
        if self.adapter:
            args += ["--adapter", self.adapter]
        if self.system_prompt is not None:
            args += ["--system-prompt", self.system_prompt]
        if self.dtype != "float32":
            args += ["--dtype", self.dtype]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if self.device:
            args += ["--device", self.device]
        if self.split != "eval":
            args += ["--split", self.split]
        if self.reuse_from:
            args += ["--reuse-from", self.reuse_from]
        args += ["--output", self.output]
        return shlex.join(args)


def resolve_adapter(spec: str | None, model: torch.nn.Module, seed: int = 0) -> PacketAdapter | None:
    """`None`/``"none"`` -> no adapter; ``"random"`` -> an untrained adapter; otherwise `from_pretrained(spec)`."""
    if spec is None or spec.lower() == "none":
        return None
    if spec.lower() == "random":
        return PacketAdapter.for_model(model, seed=seed)
    return PacketAdapter.from_pretrained(spec)


def _resolve_methods(config: EvalConfig, adapter: PacketAdapter | None) -> list[BaselineMethod]:
    methods = [make_method(s) for s in config.methods]
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise EvalRunError(f"Methods repeat: {labels}.")
    if adapter is None and any(isinstance(m, KVPacket) and m.adapter is None for m in methods):
        if config.explicit_methods:
            raise EvalRunError("kv_packet needs an adapter: pass --adapter DIR (or --adapter random for a smoke test).")
        logger.warning("No adapter given: kv_packet is skipped (pass --adapter DIR, or --adapter random).")
        methods = [m for m in methods if not isinstance(m, KVPacket)]
    return methods


def _meta(config: EvalConfig, methods: Sequence[BaselineMethod], adapter: PacketAdapter | None,
          device: torch.device) -> dict[str, Any]:
    import transformers

    return {
        "model": config.model,
        "adapter": config.adapter or "none",
        "adapter_fingerprint": adapter.fingerprint if adapter is not None else "none",
        "tasks": list(config.tasks),
        "methods": [m.label for m in methods],
        "num_samples": config.num_samples,
        "seed": config.seed,
        "split": config.split,
        "max_new_tokens": config.max_new_tokens,
        "system_prompt": config.system_prompt,
        "dtype": config.dtype,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "platform": platform.platform(terse=True),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": config.command(),
    }


def _check_resume(output: Path, config: EvalConfig) -> dict[tuple[str, str, str], str | None]:
    samples = output / SAMPLES_FILE
    if not samples.exists():
        return {}
    if not config.resume:
        raise EvalRunError(
            f"{samples} already exists. Pass --resume to continue that run, or choose another --output folder."
        )
    saved_path = output / RUN_CONFIG_FILE
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text(encoding="utf-8")).get("config", {})
        current = asdict(config)
        # Adding an adapter to a run recorded without one keeps its answers valid: no method there used an adapter.
        changed = [k for k in _FROZEN if k in saved and saved[k] != current[k]
                   and not (k == "adapter" and saved[k] is None)]
        if changed:
            diffs = ", ".join(f"{k}: {saved[k]!r} -> {current[k]!r}" for k in changed)
            raise EvalRunError(f"Cannot resume {output}: settings changed ({diffs}). Use another --output folder.")
    _drop_partial_line(samples)
    done: dict[tuple[str, str, str], str | None] = {}
    from .report import read_records

    for r in read_records(samples):
        if "error" not in r:
            done[(r["task"], r["method"], str(r["id"]))] = r.get("example_sha")
    return done


def example_sha(row: dict[str, Any]) -> str:
    """Content hash of an example (documents + question). An id alone does not pin the content: a generator's
    distractor draws may depend on `num_samples`, so answers are resumed or reused only where this hash matches."""
    payload = json.dumps([list(row["documents"]), row["question"]], ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


def _drop_stale(done: dict, shas: dict[tuple[str, str], str], where: str) -> None:
    """Forget recorded answers whose example content differs from (or cannot be checked against) this run's
    (`shas`: (task, id) -> `example_sha`)."""
    stale = [k for k, sha in done.items() if (k[0], k[2]) in shas and sha != shas[(k[0], k[2])]]
    for k in stale:
        del done[k]
    if stale:
        logger.warning("%d recorded answers in %s were for other example contents under the same id (or carry no "
                       "content hash); they are recomputed.", len(stale), where)


def _check_adapter_unchanged(output: Path, adapter: PacketAdapter | None, done: dict) -> None:
    """On resume, the adapter's weights must be those of the answers already recorded (a folder can be retrained)."""
    saved_path = output / RUN_CONFIG_FILE
    if not done or not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text(encoding="utf-8")).get("meta", {}).get("adapter_fingerprint")
    current = adapter.fingerprint if adapter is not None else "none"
    if saved == "none":  # recorded answers used no adapter, so none of them depends on its weights
        return
    if saved is not None and saved != current:
        raise EvalRunError(
            f"Cannot resume {output}: the adapter's weights changed since the recorded answers (fingerprint {saved} "
            f"-> {current}). Evaluate the new adapter into another --output folder."
        )


def _reuse_answers(config: EvalConfig, methods: Sequence[BaselineMethod], shas: dict[tuple[str, str], str],
                   done: dict, sink: Any) -> int:
    """Copy adapter-independent answers from `config.reuse_from` (see `EvalConfig.reuse_from`); returns how many."""
    source = Path(config.reuse_from)
    saved_path = source / RUN_CONFIG_FILE
    if not (source / SAMPLES_FILE).is_file() or not saved_path.is_file():
        raise EvalRunError(f"--reuse-from {source}: no {SAMPLES_FILE} / {RUN_CONFIG_FILE} there.")
    saved = json.loads(saved_path.read_text(encoding="utf-8")).get("config", {})
    current = asdict(config)
    changed = [k for k in _FROZEN if k != "adapter" and saved.get(k) != current[k]]
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise EvalRunError(f"Cannot reuse answers of {source}: settings differ ({diffs}).")
    from .report import read_records

    reusable = [m.label for m in methods if not isinstance(m, KVPacket)]
    wanted = {(task, label, i): sha for (task, i), sha in shas.items() for label in reusable}
    n = skipped = 0
    for r in read_records(source / SAMPLES_FILE):
        key = (r["task"], r["method"], str(r["id"]))
        if "error" in r or key not in wanted or key in done:
            continue
        if r.get("example_sha") != wanted[key]:  # same id, other documents (or an old record without the hash)
            skipped += 1
            continue
        sink.write(json.dumps({**r, "reused_from": r.get("reused_from", str(source))}, ensure_ascii=False) + "\n")
        done[key] = wanted[key]
        n += 1
    if skipped:
        logger.warning("%d answers of %s were not reused: their example content differs from this run's under the "
                       "same id, or they carry no content hash. They are recomputed.", skipped, source)
    sink.flush()
    return n


def _drop_partial_line(path: Path) -> None:
    """Cut a half-written last line (an interrupted run) so that appended records start on a fresh line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        logger.warning("Dropping a half-written last record of %s (%d bytes).", path, len(data) - cut)
        with path.open("r+b") as f:
            f.truncate(cut)


def _record(task: str, method: BaselineMethod, row: dict[str, Any], result) -> dict[str, Any]:
    answers = list(row["answers"])
    return {
        "task": task,
        "method": method.label,
        "id": str(row["id"]),
        "answer": result.answer_text,
        "answers": answers,
        "f1": token_f1(result.answer_text, answers),
        "exact_match": exact_match(result.answer_text, answers),
        "ttft_s": result.ttft_s,
        "flops": result.flops,
        "recomputed_tokens": result.recomputed_tokens,
        "context_tokens": result.context_tokens,
        "query_tokens": result.query_tokens,
        "new_tokens": result.new_tokens,
        "total_s": result.total_s,
        "prepare_s": result.prepare_s,
        "num_documents": len(row["documents"]),
        "example_sha": example_sha(row),
    }


def run_evaluation(config: EvalConfig, model: torch.nn.Module | None = None, tokenizer: Any = None,
                   progress: bool = True) -> dict[str, Any]:
    """Evaluate every method on every task, append per-sample records, and write the report.

    Parameters
    ----------
    config:
        The run (see :class:`EvalConfig`).
    model, tokenizer:
        Already loaded model and tokenizer (default: `load_model_and_tokenizer(config.model)`).
    progress:
        Show tqdm bars.

    Returns
    -------
    dict
        The `results.json` content (see :func:`~hf_kvpacket.evaluation.report.aggregate`).

    Raises
    ------
    EvalRunError
        Existing results without `resume`, changed settings on resume, or `kv_packet` requested without an adapter.
    """
    output = Path(config.output)
    done = _check_resume(output, config)
    if config.threads:
        torch.set_num_threads(config.threads)
    if model is None:
        from ..offline_models import load_model_and_tokenizer

        device_map = config.device or ("cuda" if torch.cuda.is_available() else None)
        kwargs = {"device_map": device_map} if device_map and device_map != "cpu" else {}
        model, tokenizer = load_model_and_tokenizer(config.model, dtype=getattr(torch, config.dtype), **kwargs)
    elif tokenizer is None:
        raise EvalRunError("Pass the tokenizer together with the model.")
    model.eval()
    adapter = resolve_adapter(config.adapter, model, seed=config.seed)
    if adapter is not None:
        adapter = adapter.to(device=model.get_input_embeddings().weight.device)
    _check_adapter_unchanged(output, adapter, done)
    methods = _resolve_methods(config, adapter)
    ctx = MethodContext(model, tokenizer, adapter=adapter, system_prompt=config.system_prompt)
    meta = _meta(config, methods, adapter, ctx.device)
    output.mkdir(parents=True, exist_ok=True)
    (output / RUN_CONFIG_FILE).write_text(json.dumps({"config": asdict(config), "meta": meta}, indent=2) + "\n",
                                          encoding="utf-8")
    datasets = {task: load_task(task, split=config.split, num_samples=config.num_samples, seed=config.seed)
                for task in config.tasks}
    shas = {(task, str(row["id"])): example_sha(row) for task, ds in datasets.items() for row in ds}
    _drop_stale(done, shas, str(output))
    warmed = not config.warmup
    with (output / SAMPLES_FILE).open("a", encoding="utf-8") as sink:
        if config.reuse_from:
            logger.info("Reused %d answers from %s.", _reuse_answers(config, methods, shas, done, sink),
                        config.reuse_from)
    todo = sum(1 for task, ds in datasets.items() for row in ds for m in methods
               if (task, m.label, str(row["id"])) not in done)
    with (output / SAMPLES_FILE).open("a", encoding="utf-8") as sink, \
            tqdm(total=todo, desc="eval", unit="answer", disable=not progress, dynamic_ncols=True) as bar:
        for task, ds in datasets.items():
            for row in ds:
                pending = [m for m in methods if (task, m.label, str(row["id"])) not in done]
                if not pending:
                    continue
                if not warmed:
                    busy = {m.label for t, d in datasets.items() for r in d for m in methods
                            if (t, m.label, str(r["id"])) not in done}
                    for m in methods:  # one-time costs (kernels, allocator, rotation tables) stay out of timings
                        if m.label in busy:
                            m.answer(ctx, row, max_new_tokens=2)
                    warmed = True
                for m in pending:
                    bar.set_postfix_str(f"{task} {m.label}", refresh=False)
                    try:
                        record = _record(task, m, row, m.answer(ctx, row, config.max_new_tokens))
                    except KVPacketError as exc:  # e.g. a context longer than the model's positions
                        logger.warning("%s / %s / %s failed: %s", task, m.label, row["id"], exc)
                        record = {"task": task, "method": m.label, "id": str(row["id"]), "error": str(exc)}
                    sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                    sink.flush()
                    bar.update(1)
                ctx.clear(preambles=False)  # packets of one example are not reused by the next
    return write_report(output, meta=meta, methods=[m.label for m in methods], tasks=list(config.tasks))


__all__ = ["EvalConfig", "EvalRunError", "RUN_CONFIG_FILE", "example_sha", "resolve_adapter", "run_evaluation"]
