"""Train a KV Packet adapter by distillation (`kvpacket train`), resumable, with held-out evaluation."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..config import WEIGHTS_NAME


# --select-on: the metric the best checkpoint is kept on, and whether higher is better.
SELECTION = {"kl": ("eval_loss", False), "fidelity": ("eval_answer_fidelity", True),
             "worst-task": ("eval_worst_task_gain", True)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct", help="offline model name, local folder or Hub id")
    p.add_argument("--task", default="mixture", help="biography | niah | hotpotqa | squad | mixture")
    p.add_argument("--output", required=True, help="adapter folder (best adapter is written here)")
    p.add_argument("--work-dir", default=None, help="teacher data + checkpoints (default: <output>.work)")
    p.add_argument("--task-option", action="append", default=None, metavar="KEY=VALUE", dest="task_options",
                   help="an option of the task's row generator, repeatable (e.g. --task-option min_documents=6 "
                        "--task-option max_documents=12 for biography rows with more people); recorded with the "
                        "teacher rows")
    p.add_argument("--num-train", type=int, default=512)
    p.add_argument("--num-val", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--epochs", type=float, default=30)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--max-context-tokens", type=int, default=768)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--header", type=int, default=None,
                   help="header slots (default 8, or the --init-from adapter's; more than its widens it, new slots in "
                        "front of the trained ones)")
    p.add_argument("--trailer", type=int, default=None,
                   help="trailer slots (default 8, or the --init-from adapter's; more than its widens it, new slots "
                        "after the trained ones)")
    p.add_argument("--loss", default="kl", choices=["kl", "ce"])
    p.add_argument("--student", default="full", choices=["full", "frozen-docs"],
                   help="full: header+trailer through the whole prompt (the paper's student); frozen-docs: header "
                        "frozen (e.g. from --init-from), trailer trained over document KV computed once per row "
                        "(training/frozen.py), several times cheaper per step")
    p.add_argument("--query-weight", type=float, default=0.0,
                   help="also distil the teacher's predictions inside the query, each position with this weight "
                        "(answer positions weigh 1; the validation KL stays answer-only). 0: answer only")
    p.add_argument("--on-policy", type=float, default=0.0, metavar="FRACTION",
                   help="on-policy distillation (training/on_policy.py): this share of the training rows (chosen by "
                        "row id) is answered greedily by the student through the product path at every step and "
                        "the teacher's top-k along that answer becomes its target; 0: the teacher's answers only")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="student (training) dtype; auto: the faster one on this machine, measured (hardware.py)")
    p.add_argument("--teacher-dtype", default="float32", choices=["auto", "bfloat16", "float32"],
                   help="dtype of the teacher's answers (computed once); float32 so the adapter learns the answers "
                        "evaluation measures (bf16 changes them on some CPUs)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (e.g. 1 to leave the other core free); default: torch's own choice")
    p.add_argument("--eval-steps", type=int, default=25)
    p.add_argument("--save-steps", type=int, default=None,
                   help="checkpoint (resumable) every N optimizer steps; divides --eval-steps (default: --eval-steps). "
                        "Cheap: a few hundred KB, so a stopped run loses minutes, not an evaluation interval")
    p.add_argument("--answer-check", type=int, default=32,
                   help="at every evaluation also answer this many validation rows greedily through the product path "
                        "(float32) and log fidelity to the teacher, F1 and first-token agreement; 0: KL only")
    p.add_argument("--select-on", default="kl", choices=list(SELECTION),
                   help="the checkpoint kept as best: lowest validation KL, highest answer fidelity (--answer-check), "
                        "or (mixed validation rows) the largest share of the no-adapter KL closed on the worst task")
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warm-up steps before the linear decay (default: 10, or one epoch when shorter); "
                        "changing it on --resume reshapes the rest of the schedule")
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint in the work dir")
    p.add_argument("--resume-from", default=None, metavar="DIR",
                   help="continue a run exactly in a new work dir from a folder written by --export-only --with-resume "
                        "(implies --resume; the teacher rows are rebuilt by the same command, and checked)")
    p.add_argument("--init-from", default=None,
                   help="adapter folder or Hub id to start from (warm start, e.g. a per-task adapter from the mixture)")
    p.add_argument("--teacher-from", default=None,
                   help="reuse the teacher answers of another run's work dir (rows of --task only, when it differs)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--teacher-only", action="store_true",
                   help="build (or finish) the teacher rows in the work dir and stop: e.g. the next run's rows on a "
                        "second core while a run trains; a later run reads them with --teacher-from")
    p.add_argument("--export-only", action="store_true",
                   help="write the best checkpoint so far to --output (e.g. while or after an interrupted run)")
    p.add_argument("--with-resume", action="store_true",
                   help="with --export-only: also write <output>/resume-checkpoint-N, the last checkpoint with what the "
                        "work dir adds (no-adapter references, best adapter, rows fingerprint), for --resume-from")


def parse_task_options(items: Sequence[str] | None) -> dict[str, Any]:
    """`["min_documents=6", "name=x"]` -> `{"min_documents": 6, "name": "x"}` (values read as JSON, else as text).

    >>> parse_task_options(["min_documents=6", 'tasks=["biography"]', "name=x"])
    {'min_documents': 6, 'tasks': ['biography'], 'name': 'x'}
    """
    options: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--task-option {item!r}: expected KEY=VALUE, e.g. --task-option min_documents=6.")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.export_only:
        export_best(args.work_dir or args.output.rstrip("/") + ".work", args.output, task=args.task,
                    with_resume=args.with_resume)
        return 0
    if args.with_resume:
        raise ValueError("--with-resume goes with --export-only (it exports a running or stopped run's last checkpoint).")
    kwargs = {k: v for k, v in vars(args).items()
              if k not in ("func", "command", "export_only", "with_resume", "threads")}
    kwargs["task_options"] = parse_task_options(args.task_options)
    train_adapter(**kwargs)
    return 0


def export_best(work_dir: str, output: str, task: str | None = None, eval_results: dict | None = None,
                with_resume: bool = False) -> str:
    """Copy the best checkpoint (lowest validation KL, or highest answer fidelity with `--select-on fidelity`) of a run to `output` as an adapter with its card.

    `with_resume` also writes `<output>/resume-checkpoint-N` (training/resume.py): the last checkpoint and what the
    work dir adds to it, which `train_adapter(resume_from=...)` continues exactly in another work dir."""
    from ..adapter import PacketAdapter

    ckpt_dir = os.path.join(work_dir, "checkpoints")
    cks = sorted((d for d in os.listdir(ckpt_dir) if d.startswith("checkpoint-")), key=lambda d: int(d.split("-")[1]))
    if not cks:
        raise FileNotFoundError(f"No checkpoint in {ckpt_dir} yet.")
    with open(os.path.join(ckpt_dir, cks[-1], "trainer_state.json")) as f:
        state = json.load(f)
    targs = _training_args(os.path.join(ckpt_dir, cks[-1], "training_args.bin"))
    metric, greater = (targs.metric_for_best_model, targs.greater_is_better) if targs else ("eval_loss", False)
    best = _best_adapter(work_dir, state["log_history"], metric, greater, state.get("best_metric"),
                         state.get("best_model_checkpoint")) or os.path.join(ckpt_dir, cks[-1])
    adapter = PacketAdapter.from_pretrained(best)
    evals = [h for h in state["log_history"] if "eval_loss" in h]
    answers = [h for h in state["log_history"] if "eval_answer_fidelity" in h]
    best_step = 0 if os.path.basename(best) == "init_adapter" else int(os.path.basename(best).split("-")[1])
    best_kl = next((h["eval_loss"] for h in evals if h["step"] == best_step), None)
    training_args = {"task": task or adapter.config.task, "checkpoint": os.path.basename(best),
                     "steps_run": state.get("global_step"), "best_val_kl": best_kl,
                     **_trainer_settings(os.path.join(best, "training_args.bin")),
                     "val_kl_curve": [(h["step"], round(h["eval_loss"], 4)) for h in evals]}
    if answers:
        training_args["answer_fidelity_curve"] = [(h["step"], h["eval_answer_fidelity"]) for h in answers]
        training_args["answer_f1_curve"] = [(h["step"], h["eval_answer_f1"]) for h in answers]
    stored = _read_kept(work_dir, REFERENCE_FILE)
    if stored is not None:
        training_args["no_adapter_val_kl"] = stored["no_adapter_val_kl"]
        if stored.get("per_task"):
            training_args["no_adapter_val_kl_per_task"] = stored["per_task"]
    answers_reference = _read_kept(work_dir, ANSWERS_REFERENCE_FILE)
    if answers_reference is not None:
        training_args["no_adapter_answers"] = answers_reference["metrics"]
    adapter.save_pretrained(output, training_args=training_args, eval_results=eval_results,
                            datasets=[training_args["task"]] if training_args["task"] else None)
    _write_log(output, work_dir, training_args, state["log_history"])
    if with_resume:
        from .resume import export_resume_checkpoint

        for old in (d for d in os.listdir(output) if d.startswith("resume-checkpoint-")):  # one per export: the last
            shutil.rmtree(os.path.join(output, old))
        export_resume_checkpoint(work_dir, os.path.join(ckpt_dir, cks[-1]), best, output,
                                 kept_files=(REFERENCE_FILE, ANSWERS_REFERENCE_FILE))
    return best


def _training_args(path: str) -> Any:
    """A checkpoint's `TrainingArguments` (`None` for checkpoints saved without them)."""
    return torch.load(path, weights_only=False) if os.path.exists(path) else None


def _start_is_best(history: list[dict[str, Any]], metric: str, greater: bool, best_metric: float | None) -> bool:
    """Whether the starting adapter's evaluation (step 0) beats every later one. Trainer never ranks the
    `eval_on_start` evaluation, so without this a run that only made its adapter worse would ship its last step."""
    start = next((h[metric] for h in history if h.get("step") == 0 and metric in h), None)
    if start is None:
        return False
    return best_metric is None or (start > best_metric if greater else start < best_metric)


def _best_adapter(work_dir: str, history: list[dict[str, Any]], metric: str, greater: bool,
                  best_metric: float | None, best_checkpoint: str | None) -> str | None:
    """Folder of a run's best adapter: the starting adapter when no evaluated step beat it, else Trainer's best
    checkpoint (`None` when it recorded none). Training's closing load and `export_best` both choose with this."""
    if _start_is_best(history, metric, greater, best_metric):
        return os.path.join(work_dir, "init_adapter")
    return os.path.join(work_dir, "checkpoints", os.path.basename(best_checkpoint)) if best_checkpoint else None


def _trainer_settings(path: str) -> dict[str, Any]:
    """Effective batch, lr and warm-up of a checkpoint's run (so an export's curve is drawn against samples seen)."""
    targs = _training_args(path)
    if targs is None:
        return {}
    return {"effective_batch": targs.per_device_train_batch_size * targs.gradient_accumulation_steps,
            "lr": targs.learning_rate, "warmup_steps": targs.warmup_steps}


REFERENCE_FILE = "no_adapter_val_kl.json"
# Validation rows are evaluated one at a time: Trainer averages per-batch token means, so with larger eval batches a
# row's weight would depend on the batch it lands in and on the training batch size (v13's KL .1565 at batch 4 is
# .1757 at batch 1 for the same weights): runs with different batch sizes could not be compared.
EVAL_BATCH_SIZE = 1


def _read_kept(work_dir: str, name: str) -> dict[str, Any] | None:
    """A no-adapter reference kept in the work dir (`None` when not computed yet)."""
    path = os.path.join(work_dir, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _keep(work_dir: str, name: str, payload: dict[str, Any]) -> None:
    """Write a reference atomically, so an interrupted run never leaves half a file to resume from."""
    path = os.path.join(work_dir, name)
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f)
    os.replace(path + ".tmp", path)


def _reference_kl(work_dir: str, base: Any, val: Any, pad: int, loss: str) -> tuple[float, dict[str, float] | None]:
    """The no-adapter validation KL of this run, overall and (mixed validation rows) per task, measured the way the
    trainer measures the adapter (`EVAL_BATCH_SIZE` rows at a time); computed once and kept in the work dir for
    resumed runs, recomputed when it was measured another way."""
    from .reference import no_adapter_kl
    from .trainer import task_rows

    tasks = task_rows(val)
    dtype = str(next(base.parameters()).dtype).removeprefix("torch.")
    stored = _read_kept(work_dir, REFERENCE_FILE)
    # References kept before the dtype was recorded are taken as they are (they were measured in this run's dtype).
    if (stored is not None and (len(tasks) < 2 or "per_task" in stored) and stored.get("dtype", dtype) == dtype
            and stored.get("eval_batch_size") == EVAL_BATCH_SIZE and stored.get("num_val") == len(val)):
        return stored["no_adapter_val_kl"], stored.get("per_task")
    kl = lambda rows: no_adapter_kl(base, rows, pad_token_id=pad, batch_size=EVAL_BATCH_SIZE, loss_type=loss)  # noqa: E731
    per_task = {t: kl(val.select(rows)) for t, rows in tasks.items()} if len(tasks) > 1 else None
    value = sum(per_task[t] * len(rows) for t, rows in tasks.items()) / len(val) if per_task else kl(val)
    _keep(work_dir, REFERENCE_FILE, {"no_adapter_val_kl": value, "num_val": len(val), "eval_batch_size": EVAL_BATCH_SIZE,
                                     "dtype": dtype, **({"per_task": per_task} if per_task else {})})
    return value, per_task


ANSWERS_REFERENCE_FILE = "no_adapter_answers.json"


def _reference_answers(work_dir: str, base: Any, check: Any) -> dict[str, float]:
    """The answer check without adapter (plain packets: no recompute), computed once per work dir."""
    stored = _read_kept(work_dir, ANSWERS_REFERENCE_FILE)
    if stored is not None and stored.get("num_rows") == len(check.rows):
        return stored["metrics"]
    metrics = {k: round(v, 4) for k, v in check(base, None).items()}
    _keep(work_dir, ANSWERS_REFERENCE_FILE, {"metrics": metrics, "num_rows": len(check.rows)})
    return metrics


def _write_log(output: str, work_dir: str, training_args: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """training_log.json of an adapter; a warm-started run embeds the log of the adapter it started from."""
    log: dict[str, Any] = {"training_args": training_args, "log_history": history}
    previous = os.path.join(work_dir, "init_adapter", "training_log.json")
    if os.path.exists(previous):
        with open(previous) as f:
            log["previous"] = json.load(f)
    with open(os.path.join(output, "training_log.json"), "w") as f:
        json.dump(log, f, indent=1)


def _teacher_dir(path: str) -> str:
    return os.path.join(path, "teacher") if os.path.isdir(os.path.join(path, "teacher")) else path


TASK_OPTIONS_FILE = "task_options.json"


def _check_task_options(teacher_dir: str, options: dict[str, Any]) -> None:
    """Record the row generator's options beside the teacher rows; a resumed build must use the same ones.

    The rows' fingerprint covers their ids, which do not change with e.g. `min_documents`: without this check a
    resumed build would append rows of another distribution to the ones already made.
    """
    path = os.path.join(teacher_dir, TASK_OPTIONS_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        if stored != options:
            raise ValueError(f"{teacher_dir} holds rows made with --task-option {stored}, this run asks for {options}; "
                             "rerun with the same options or use another --work-dir.")
        return
    if os.path.isdir(teacher_dir) and any(d.startswith("shard-") for d in os.listdir(teacher_dir)):
        if options:  # rows made before options were recorded: their generator ran with the defaults
            raise ValueError(f"{teacher_dir} holds rows made without --task-option; use another --work-dir for "
                             f"rows with {options}.")
        return
    os.makedirs(teacher_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(options, f, indent=2)


def teacher_settings(path: str) -> dict[str, Any]:
    """The teacher settings shared by one or more runs' rows (comma-separated work dirs or `teacher` folders).

    Answer budget, top-k, system prompt and query targets must agree: they decide what the student is taught. The
    context budget may differ (short mixture rows beside long NIAH rows, so an adapter sees the lengths it is
    evaluated on): it only chose which documents each row kept, and the kept token ids are stored with the row. The
    result names the largest budget.
    """
    settings, first = None, path.split(",")[0]
    for one in path.split(","):
        tdir = _teacher_dir(one)
        cfg_file = os.path.join(tdir, "teacher_config.json")
        if not os.path.isfile(cfg_file):
            raise FileNotFoundError(f"No teacher rows in {tdir} ({cfg_file} is missing); build them with "
                                    f"`kvpacket train ... --work-dir {one} --teacher-only`.")
        with open(cfg_file) as f:
            cfg = json.load(f)
        if settings is None:
            settings = dict(cfg)
            continue
        differ = {k: (settings.get(k), cfg.get(k)) for k in set(settings) | set(cfg)
                  if k != "max_context_tokens" and settings.get(k) != cfg.get(k)}
        if differ:
            raise ValueError(f"{tdir} was made with other teacher settings than {first}: {differ} "
                             "(first run's value, this one's); rebuild one of them with the other's settings.")
        settings["max_context_tokens"] = max(settings["max_context_tokens"], cfg["max_context_tokens"])
    return settings


def load_teacher_dataset(path: str):
    """The teacher rows stored by one or more runs (comma-separated work dirs or `teacher` folders), in order.

    The runs must share the teacher settings (:func:`teacher_settings`); the first run's rows come first, so a later
    run's `num_val` validation rows stay those of the first.
    """
    import datasets

    teacher_settings(path)
    parts = []
    for one in path.split(","):
        tdir = _teacher_dir(one)
        shards = sorted(d for d in os.listdir(tdir) if d.startswith("shard-") and not d.endswith(".tmp"))
        if not shards:
            raise FileNotFoundError(f"No teacher shards in {tdir}.")
        parts += [datasets.load_from_disk(os.path.join(tdir, d)) for d in shards]
    return datasets.concatenate_datasets(parts)


def _source_id(row_id: str) -> str:
    # a real-data row's id is its question's id plus the draw's seed (SQuAD: "-s<seed>"); synthetic ids are unique
    return re.sub(r"-s\d+$", "", row_id)


def drop_validation_sources(train, val):
    """`train` without the rows that ask a validation row's question (teacher rows pooled from runs of other seeds
    can draw the same SQuAD/HotpotQA question; kept, they would leak into the held-out curve)."""
    held = {_source_id(i) for i in val["id"]}
    keep = [k for k, i in enumerate(train["id"]) if _source_id(i) not in held]
    if len(keep) < len(train):
        n = len(train) - len(keep)
        print(f"hf_kvpacket: left out {n} training row{'s' if n > 1 else ''} asking a validation row's question",
              file=sys.stderr)
    return train.select(keep)


def train_adapter(model: str, task: str, output: str, work_dir: str | None = None, num_train: int = 512,
                  num_val: int = 64, seed: int = 42, epochs: float = 30, lr: float = 5e-4, batch_size: int = 4,
                  grad_accum: int = 4, max_context_tokens: int = 768, max_new_tokens: int = 24, header: int | None = None,
                  trailer: int | None = None, loss: str = "kl", dtype: str = "auto", eval_steps: int = 25, save_steps: int | None = None,
                  max_steps: int = -1, resume: bool = False, no_progress: bool = False,
                  init_from: str | None = None, teacher_from: str | None = None, query_weight: float = 0.0,
                  teacher_dtype: str = "float32", student: str = "full", answer_check: int = 0,
                  select_on: str = "kl", model_and_tokenizer: tuple[Any, Any] | None = None,
                  teacher_only: bool = False, warmup_steps: int | None = None,
                  task_options: dict[str, Any] | None = None, on_policy: float = 0.0,
                  resume_from: str | None = None) -> dict[str, Any]:
    """Teacher answers (cached) -> distillation with a linear-decay schedule -> best adapter (lowest held-out KL).

    `init_from` warm-starts from an existing adapter of the same model (its slot counts, or more: `header`/`trailer`
    above its counts widen it with :meth:`PacketAdapter.widened`); `teacher_from` reuses the teacher
    answers stored in another run's work dir, keeping the rows of `task` (so per-task adapters can be fine-tuned from
    a mixture run without a second teacher pass). Validation rows stay the first `num_val` rows of that data.
    `answer_check` > 0 answers that many validation rows greedily at every evaluation (:class:`AnswerCheck`);
    `select_on="fidelity"` then keeps the checkpoint whose answers agree most with the teacher's.
    `teacher_only` builds the teacher rows and returns without training (`{"teacher_rows": n}`).
    `warmup_steps` (default 10, or one epoch when shorter) precede the linear decay to 0 at `max_steps`.
    `on_policy` > 0 trains that share of the rows on the student's own greedy answers, scored by the teacher
    (:class:`~hf_kvpacket.training.OnPolicyCollator`); the validation KL stays on the teacher's answers.
    `resume_from` (a folder written by `export_best(with_resume=True)`) continues that run exactly in this work dir.
    """
    from transformers import TrainingArguments

    from ..adapter import PacketAdapter
    from ..tasks import load_task
    from ..offline_models import load_model_and_tokenizer
    from . import DistillationCollator, PacketDistillationModel, PacketDistillationTrainer, TeacherConfig
    from .teacher import build_teacher_dataset

    save_steps = save_steps or eval_steps
    if save_steps <= 0 or eval_steps % save_steps:
        raise ValueError(f"--save-steps {save_steps} must divide --eval-steps {eval_steps}, so every evaluated step has "
                         "a checkpoint the best one can be kept from (e.g. --save-steps 2 --eval-steps 8).")
    if on_policy and student != "full":
        raise ValueError("--on-policy answers through the full student's product path; use it with --student full.")
    if not 0.0 <= on_policy <= 1.0:
        raise ValueError(f"--on-policy is a share of the training rows in [0, 1], got {on_policy}.")
    if teacher_only and teacher_from is not None:
        raise ValueError("--teacher-only builds new teacher rows in the work dir; drop --teacher-from.")
    task_options = dict(task_options or {})
    if task_options and teacher_from is not None:
        raise ValueError("--task-option shapes the rows this run makes; with --teacher-from the rows already exist "
                         "(their options are in each work dir's teacher/task_options.json): drop --task-option.")
    work_dir = work_dir or output.rstrip("/") + ".work"
    os.makedirs(work_dir, exist_ok=True)
    rows_fingerprint = None
    if resume_from is not None:
        from .resume import restore_resume_checkpoint

        rows_fingerprint, resume = restore_resume_checkpoint(resume_from, work_dir), True
    from ..hardware import resolve_dtype

    torch_dtype, teacher_torch_dtype = resolve_dtype(dtype), resolve_dtype(teacher_dtype)
    dtype = str(torch_dtype).removeprefix("torch.")  # recorded in the card as what ran, not "auto"
    if model_and_tokenizer is None:
        base, tok = load_model_and_tokenizer(model, dtype=teacher_torch_dtype)
    else:
        base, tok = model_and_tokenizer
    torch.manual_seed(seed)
    # Train and validation rows both come from the training split (index >= 4000 / train streams).
    if teacher_from is not None:
        teacher = load_teacher_dataset(teacher_from)
        if task != "mixture":
            teacher = teacher.filter(lambda r: r["task"] == task)
        if len(teacher) == 0:
            raise ValueError(f"{teacher_from} holds no teacher rows of task {task!r}.")
        tcfg_used = teacher_settings(teacher_from)
        max_new_tokens, max_context_tokens = tcfg_used["max_new_tokens"], tcfg_used["max_context_tokens"]
        teacher = teacher.select(range(min(len(teacher), num_train + num_val)))
    else:
        _check_task_options(os.path.join(work_dir, "teacher"), task_options)
        rows = load_task(task, split="train", num_samples=num_train + num_val, seed=seed, **task_options)
        rows = rows.shuffle(seed=seed)
        tcfg = TeacherConfig(max_new_tokens=max_new_tokens, max_context_tokens=max_context_tokens,
                             query_targets=query_weight > 0)
        teacher = build_teacher_dataset(base, tok, rows, os.path.join(work_dir, "teacher"), tcfg,
                                        progress=not no_progress)
    if resume_from is not None:
        from .resume import check_teacher_rows

        check_teacher_rows(rows_fingerprint, _teacher_dir(teacher_from or work_dir), resume_from)
    if teacher_only:
        return {"teacher_rows": len(teacher), "teacher_dir": os.path.join(work_dir, "teacher")}
    if model_and_tokenizer is None:
        base = base.to(torch_dtype)  # teacher rows are stored; the student trains in the faster dtype
    teacher = teacher.filter(lambda r: len(r["teacher_ids"]) > 0)
    val = teacher.select(range(min(num_val, len(teacher))))
    train = teacher.select(range(len(val), len(teacher)))
    if teacher_from is not None and len(val):
        train = drop_validation_sources(train, val)
    adapter_path = os.path.join(work_dir, "init_adapter")
    if os.path.isdir(adapter_path):
        adapter = PacketAdapter.from_pretrained(adapter_path)
    elif init_from is not None:
        adapter = PacketAdapter.from_pretrained(init_from)
        warm = (adapter.num_header_tokens, adapter.num_trailer_tokens)
        wanted = (warm[0] if header is None else header, warm[1] if trailer is None else trailer)
        if wanted != warm:  # more slots than the warm start: keep its trained ones, add fresh ones around them
            adapter = adapter.widened(base, *wanted, seed=seed)
            print(f"hf_kvpacket: widened {init_from} from {warm[0]}+{warm[1]} to {wanted[0]}+{wanted[1]} slots",
                  file=sys.stderr)
        adapter.config.task = task
        adapter.save_pretrained(adapter_path, model_card=False)
        if os.path.exists(os.path.join(init_from, "training_log.json")):  # provenance of the warm start
            shutil.copyfile(os.path.join(init_from, "training_log.json"),
                            os.path.join(adapter_path, "training_log.json"))
    else:
        adapter = PacketAdapter.for_model(base, 8 if header is None else header, 8 if trailer is None else trailer,
                                          seed=seed, task=task)
        from ..offline_models import OFFLINE_MODELS

        # Cards name the Hub id of the base model, also when it was loaded from an offline package.
        adapter.config.base_model_name_or_path = OFFLINE_MODELS[model].hub_id if model in OFFLINE_MODELS else model
        adapter.save_pretrained(adapter_path, model_card=False)
    header, trailer = adapter.num_header_tokens, adapter.num_trailer_tokens  # also when resuming a widened run
    if student == "frozen-docs":
        from .frozen import FrozenDocumentStudent

        wrapper = FrozenDocumentStudent(base, adapter, loss_type=loss)
    else:
        wrapper = PacketDistillationModel(base, adapter, loss_type=loss)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    if query_weight > 0 and "query_topk_ids" not in teacher.column_names:
        raise ValueError(f"--query-weight needs teacher rows with query targets; {teacher_from or work_dir} has none "
                         "(build them in a new work dir with --query-weight set).")
    collator = DistillationCollator(header, trailer, pad_token_id=pad, query_weight=query_weight)
    if on_policy > 0:
        from .on_policy import OnPolicyCollator

        collator = OnPolicyCollator(collator, base, adapter, tok, fraction=on_policy, max_new_tokens=max_new_tokens)
    if select_on not in SELECTION:
        raise ValueError(f"select_on must be one of {', '.join(SELECTION)}, got {select_on!r}.")
    from .trainer import task_rows

    if select_on == "worst-task" and len(task_rows(val)) < 2:
        raise ValueError("select_on='worst-task' needs validation rows of several tasks (--task mixture).")
    if select_on == "fidelity" and answer_check <= 0:
        raise ValueError("select_on='fidelity' needs answer_check > 0 (kvpacket train --answer-check N).")
    check = None
    if answer_check > 0:
        from .answer_check import AnswerCheck

        check = AnswerCheck(val.select(range(min(answer_check, len(val)))), tok, max_new_tokens=max_new_tokens)
    steps_per_epoch = math.ceil(len(train) / (batch_size * grad_accum))
    last = None
    ckpt_dir = os.path.join(work_dir, "checkpoints")
    if resume and os.path.isdir(ckpt_dir):
        cks = sorted((d for d in os.listdir(ckpt_dir) if d.startswith("checkpoint-")), key=lambda d: int(d.split("-")[1]))
        last = os.path.join(ckpt_dir, cks[-1]) if cks else None
    targs = TrainingArguments(
        output_dir=ckpt_dir, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=EVAL_BATCH_SIZE, gradient_accumulation_steps=grad_accum, learning_rate=lr,
        weight_decay=0.0, lr_scheduler_type="linear", warmup_steps=min(10, steps_per_epoch) if warmup_steps is None else warmup_steps, num_train_epochs=epochs,
        max_steps=max_steps, eval_strategy="steps", eval_steps=eval_steps, save_strategy="steps",
        # Trainer's own best-model loading needs save == eval steps; the best is loaded below instead, so checkpoints
        # can be more frequent than evaluations (metric_for_best_model still tracks and keeps the best checkpoint).
        save_steps=save_steps, save_total_limit=3, load_best_model_at_end=False,
        metric_for_best_model=SELECTION[select_on][0], greater_is_better=SELECTION[select_on][1], logging_steps=5, eval_on_start=last is None, remove_unused_columns=False, report_to=[], use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=no_progress, seed=seed, label_names=["labels"],
    )
    trainer = PacketDistillationTrainer(model=wrapper, args=targs, train_dataset=train, eval_dataset=val,
                                        data_collator=collator, answer_check=check)
    reference, task_references = _reference_kl(work_dir, base, val, pad, loss)
    trainer.task_references = task_references
    answers_reference = _reference_answers(work_dir, base, check) if check is not None else None
    start = time.time()
    trainer.train(resume_from_checkpoint=last)
    # The best evaluated adapter, or the starting one when no step beat it (not the last step).
    best = _best_adapter(work_dir, trainer.state.log_history, targs.metric_for_best_model, targs.greater_is_better,
                         trainer.state.best_metric, trainer.state.best_model_checkpoint)
    if best is not None and os.path.isfile(os.path.join(best, WEIGHTS_NAME)):
        trainer._load_from_checkpoint(best)
    # The closing evaluation re-measures the best checkpoint's KL; its answers were checked at its own step already.
    trainer.answer_check = None
    metrics = trainer.evaluate()
    history = [h for h in trainer.state.log_history]
    training_args = {"task": task, "num_train": len(train), "num_val": len(val), "epochs": epochs, "lr": lr,
                     "effective_batch": batch_size * grad_accum, "eval_batch_size": EVAL_BATCH_SIZE, "schedule": "linear decay", "warmup_steps": targs.warmup_steps, "loss": loss,
                     "query_weight": query_weight, "on_policy": on_policy or None, "max_context_tokens": max_context_tokens, "teacher_max_new_tokens": max_new_tokens,
                     "task_options": task_options or None, "dtype": dtype, "student": student, "init_from": init_from, "teacher_from": teacher_from, "best_val_kl": metrics.get("eval_loss"),
                     "no_adapter_val_kl": reference, "no_adapter_val_kl_per_task": task_references,
                     "no_adapter_answers": answers_reference, "select_on": select_on,
                     "steps": trainer.state.global_step,
                     "train_minutes": round((time.time() - start) / 60, 1)}
    if on_policy > 0:  # rows this process answered on-policy, and how many answers equalled the teacher's
        training_args["on_policy_stats"] = dict(collator.stats)
    adapter.save_pretrained(output, training_args=training_args, datasets=[task])
    _write_log(output, work_dir, training_args, history)
    return {"metrics": metrics, "training_args": training_args}
