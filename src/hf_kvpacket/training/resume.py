"""Resume checkpoints that travel: a run's last checkpoint as a self-contained folder that continues it exactly in
another work dir (a new session, a clean clone, another machine).

A work dir holds what a run needs besides its checkpoint: teacher rows (rebuilt deterministically from the run's own
command, minutes to an hour), the no-adapter references (validation KL and answers, tens of minutes to remeasure)
and, when the best evaluated step is older than the last one, the best adapter. `export_resume_checkpoint` writes
the checkpoint (adapter, optimizer, scheduler, RNG, trainer state) plus the references, the best adapter and the
teacher rows' fingerprint into one folder of a few hundred KB; `restore_resume_checkpoint` lays them back into a new
work dir and `check_teacher_rows` refuses to go on over other rows than the ones the run trained on.

    kvpacket train ... --export-only --with-resume     # -> <output>/resume-checkpoint-N/
    kvpacket train ... --resume-from <output>/resume-checkpoint-N   # same command, a new work dir
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Sequence

from ..config import CONFIG_NAME, WEIGHTS_NAME
from ..errors import ResumeCheckpointError
from .teacher import rows_fingerprint

MANIFEST = "resume.json"
BEST_ADAPTER = "best_adapter"


def export_resume_checkpoint(work_dir: str, checkpoint: str, best: str | None, dest_parent: str,
                             kept_files: Sequence[str]) -> str:
    """Copy `checkpoint` (a folder under `<work_dir>/checkpoints`) to `<dest_parent>/resume-<name>` with the work
    dir's `kept_files` (no-adapter references), the best adapter (`best`, when it is not `checkpoint` itself) and the
    teacher rows' fingerprint. Returns the folder written."""
    name = os.path.basename(checkpoint.rstrip("/"))
    dest = os.path.join(dest_parent, f"resume-{name}")
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    # Trainer's RNG file and optimizer state are what make the continuation exact; the rest is the adapter itself.
    shutil.copytree(checkpoint, dest)
    kept = [f for f in kept_files if os.path.isfile(os.path.join(work_dir, f))]
    for f in kept:
        shutil.copyfile(os.path.join(work_dir, f), os.path.join(dest, f))
    best_name = None
    if best is not None and os.path.abspath(best) != os.path.abspath(checkpoint):
        best_name = os.path.basename(best.rstrip("/"))
        os.makedirs(os.path.join(dest, BEST_ADAPTER))
        for f in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copyfile(os.path.join(best, f), os.path.join(dest, BEST_ADAPTER, f))
    with open(os.path.join(dest, MANIFEST), "w") as f:
        json.dump({"checkpoint": name, "best": best_name, "references": kept,
                   "rows_fingerprint": rows_fingerprint(os.path.join(work_dir, "teacher"))}, f, indent=1)
    return dest


def restore_resume_checkpoint(src: str, work_dir: str) -> str | None:
    """Lay a folder written by `export_resume_checkpoint` into `work_dir` (checkpoint, references, best adapter),
    keeping whatever the work dir already holds. Returns the teacher rows' fingerprint it was made on (or `None`)."""
    manifest = os.path.join(src, MANIFEST)
    missing = [f for f in (MANIFEST, WEIGHTS_NAME, "trainer_state.json", "optimizer.pt", "scheduler.pt")
               if not os.path.isfile(os.path.join(src, f))]
    if missing:
        raise ResumeCheckpointError(
            f"{src} is not a resume checkpoint: it lacks {', '.join(missing)}. Write one with `kvpacket train <the "
            "run's arguments> --export-only --with-resume` while the run's work dir still exists.")
    with open(manifest) as f:
        info = json.load(f)
    ckpt_dir = os.path.join(work_dir, "checkpoints")
    target = os.path.join(ckpt_dir, info["checkpoint"])
    if not os.path.isdir(target):
        extras = {MANIFEST, BEST_ADAPTER, *info["references"]}
        shutil.copytree(src, target, ignore=lambda d, names: [n for n in names if d == src and n in extras])
    for f in info["references"]:
        if not os.path.exists(os.path.join(work_dir, f)):
            shutil.copyfile(os.path.join(src, f), os.path.join(work_dir, f))
    if info["best"] is not None:
        best = os.path.join(work_dir, "init_adapter" if info["best"] == "init_adapter" else f"checkpoints/{info['best']}")
        if not os.path.isdir(best):
            shutil.copytree(os.path.join(src, BEST_ADAPTER), best)
    return info["rows_fingerprint"]


def check_teacher_rows(expected: str | None, teacher_dir: str, src: str) -> None:
    """Refuse to resume a run over other teacher rows than those it trained on (same ids and settings)."""
    if expected is None:
        return
    found = rows_fingerprint(teacher_dir)
    if found != expected:
        raise ResumeCheckpointError(
            f"{src} was trained on teacher rows {expected}, but {teacher_dir} holds rows {found}: rebuild them with the "
            "run's own command (same --task, --num-train, --num-val, --seed, --max-context-tokens, --query-weight and "
            "--task-option values) in a fresh --work-dir.")
