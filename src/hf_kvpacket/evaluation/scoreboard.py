"""The headline table: each shipped adapter against the baselines on the same held-out rows.

An adapter's held-out numbers are spread over many results folders: one run per task, KV Packet answers in one
folder, CacheBlend and EPIC answers (hours of CPU each) in another made for an earlier adapter, full and no recompute
reused between them. The scoreboard pools those folders by *example* (`example_sha`, the hash of the row's documents,
query and answers), so every number in a row of the table comes from the same examples:

* KV Packet answers are taken only from folders whose `adapter_fingerprint` is the adapter's own (a folder evaluated
  with an older checkpoint never counts for a newer adapter, whatever its name);
* baseline answers from any folder with the same model, dtype, answer budget, system prompt and split;
* fidelity is each answer's token F1 against the full-recompute answer of the same example; the share of the
  no-recompute -> full-recompute gap and the paired differences against CacheBlend/EPIC are bootstrapped over the
  examples all of them answered (:mod:`hf_kvpacket.evaluation.intervals`);
* where full recompute was also run in another dtype on the same rows (e.g. bf16, same other settings), its fidelity
  to the fp32 answers is the *noise floor*: how far numerical noise alone moves greedy answers, the ceiling against
  which any inexact method's fidelity reads.

Render it (markdown + a figure with the intervals) with::

    python -m hf_kvpacket.evaluation.scoreboard results --adapter adapters/qwen2.5-coder-0.5b-instruct-mixture \\
        --adapter adapters/smollm2-135m-instruct-mixture --markdown docs/scoreboard.md --plot docs/img/scoreboard.png

>>> board = build_scoreboard(["results"], ["adapters/smollm2-135m-instruct-mixture"])  # doctest: +SKIP
>>> board[0]["tasks"]["niah"]["fidelity"]["kv_packet"]["mean"]  # doctest: +SKIP
0.891
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .intervals import bootstrap_mean_ci, gap_share, macro_paired_difference, paired_difference
from .metrics import fidelity as fidelity_score
from .plots import _COLORS, _figure
from .report import REFERENCE_METHOD, RESULTS_FILE, SAMPLES_FILE, ReportError, read_records

METHOD = "kv_packet"
NO_RECOMPUTE = "no_recompute"
BASELINES = ("cacheblend", "epic")
COLUMNS = (REFERENCE_METHOD, NO_RECOMPUTE, *BASELINES, METHOD)
LABELS = {REFERENCE_METHOD: "full recompute", NO_RECOMPUTE: "no recompute", "cacheblend": "CacheBlend",
          "epic": "EPIC", METHOD: "KV Packet"}
# answers are comparable only when these settings agree (the rows themselves are matched by example_sha)
SETTINGS = ("model", "dtype", "max_new_tokens", "system_prompt", "split")
# full recompute in another dtype on the same rows: fidelity under numerical noise alone (see the module docstring)
NOISE_FLOOR = "noise_floor"


def adapter_fingerprint_of(adapter_dir: str | os.PathLike) -> str:
    """The fingerprint an adapter folder was saved with (read from its safetensors header; no model needed)."""
    from safetensors import safe_open

    from ..adapter import WEIGHTS_NAME

    path = Path(adapter_dir) / WEIGHTS_NAME
    if not path.is_file():
        raise ReportError(f"No adapter weights at {path}: pass a folder written by PacketAdapter.save_pretrained.")
    with safe_open(str(path), framework="pt") as f:
        fingerprint = (f.metadata() or {}).get("fingerprint")
    if not fingerprint:
        raise ReportError(f"{path} has no 'fingerprint' in its metadata: re-save it with PacketAdapter.save_pretrained.")
    return fingerprint


def _results_dirs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Results folders under `paths` (a folder with samples.jsonl, or a parent of such folders)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / SAMPLES_FILE).is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(c for c in p.iterdir() if (c / SAMPLES_FILE).is_file())
        else:
            raise ReportError(f"{p} is neither a results folder (with {SAMPLES_FILE}) nor a folder of them.")
    return found


def _meta(results_dir: Path) -> dict[str, Any]:
    for name, key in ((RESULTS_FILE, "meta"), ("run_config.json", "meta")):
        path = results_dir / name
        if path.is_file():
            meta = json.loads(path.read_text(encoding="utf-8")).get(key)
            if meta:
                return meta
    raise ReportError(f"{results_dir} has no run metadata ({RESULTS_FILE} or run_config.json): rebuild it with "
                      f"`kvpacket eval --output {results_dir} --report-only`.")


def _settings(meta: Mapping[str, Any]) -> tuple:
    return tuple(meta.get(k, "eval" if k == "split" else None) for k in SETTINGS)


def _pool(loaded: Sequence[tuple[Path, Mapping[str, Any], Sequence[Mapping[str, Any]]]], fingerprint: str,
          method: str) -> dict[str, Any] | None:
    """Records of `method` under `fingerprint` and of the baselines on the same settings, keyed by (task, sha);
    `loaded` holds (folder, meta, records) of every results folder considered."""
    own = [(d, m) for d, m, _ in loaded if m.get("adapter_fingerprint") == fingerprint]
    if not own:
        return None
    settings = _settings(own[0][1])
    answers: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    sources: dict[str, set[str]] = {}
    for d, meta, records in loaded:
        if _settings(meta) != settings:
            continue
        mine = meta.get("adapter_fingerprint") == fingerprint
        for r in records:
            if "error" in r or "example_sha" not in r:
                continue
            name = r["method"]
            if name == method and not mine:
                continue  # another adapter's answers
            if name != method and name not in COLUMNS:
                continue
            key = (r["task"], r["example_sha"])
            if key not in answers.setdefault(name, {}):
                answers[name][key] = r
                sources.setdefault(r["task"], set()).add(d.name)
    return {"meta": own[0][1], "answers": answers, "sources": sources, "settings": dict(zip(SETTINGS, settings))}


def _noise_floor(loaded: Sequence[tuple[Path, Mapping[str, Any], Sequence[Mapping[str, Any]]]],
                 settings: Mapping[str, Any]) -> tuple[dict[tuple[str, str], dict[str, Any]], list[str]]:
    """Full-recompute answers, keyed by (task, sha), of runs in settings that differ from `settings` in dtype only;
    and the dtypes they were run in."""
    floor: dict[tuple[str, str], dict[str, Any]] = {}
    dtypes: set[str] = set()
    for _, meta, records in loaded:
        other = dict(zip(SETTINGS, _settings(meta)))
        if other["dtype"] == settings["dtype"] or any(other[k] != settings[k] for k in SETTINGS if k != "dtype"):
            continue
        for r in records:
            if r.get("method") == REFERENCE_METHOD and "error" not in r and "example_sha" in r:
                floor.setdefault((r["task"], r["example_sha"]), r)
                dtypes.add(str(other["dtype"]))
    return floor, sorted(dtypes)


def _stat(values: Sequence[float]) -> dict[str, Any]:
    return {"mean": sum(values) / len(values) if values else None, "ci": bootstrap_mean_ci(values), "n": len(values)}


def _per_example(answers: Mapping[str, Mapping[tuple[str, str], Mapping[str, Any]]], task: str,
                 method: str) -> tuple[list[str], dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """The examples `method` answered on `task` (with a full-recompute answer), and per method {sha: F1} and
    {sha: fidelity} on those of them it answered too."""
    ref = answers.get(REFERENCE_METHOD, {})
    shas = sorted(s for (t, s) in answers.get(method, {}) if t == task and (t, s) in ref)
    per_method_f1: dict[str, dict[str, float]] = {}
    per_method_fid: dict[str, dict[str, float]] = {}
    for name in COLUMNS[:-1] + (method, NOISE_FLOOR):
        rows = {s: answers.get(name, {}).get((task, s)) for s in shas}
        rows = {s: r for s, r in rows.items() if r is not None}
        if rows:
            per_method_f1[name] = {s: r["f1"] for s, r in rows.items()}
            per_method_fid[name] = {s: fidelity_score(r["answer"], ref[(task, s)]["answer"]) for s, r in rows.items()}
    return shas, per_method_f1, per_method_fid


def score_task(answers: Mapping[str, Mapping[tuple[str, str], Mapping[str, Any]]], task: str,
               method: str = METHOD) -> dict[str, Any]:
    """One task's row: F1 and fidelity per method on the examples `method` answered, gap share, paired deltas."""
    return _score_row(*_per_example(answers, task, method), method)


def _score_row(shas: Sequence[str], per_method_f1: Mapping[str, Mapping[str, float]],
               per_method_fid: Mapping[str, Mapping[str, float]], method: str) -> dict[str, Any]:
    """:func:`score_task` from the per-example scores of :func:`_per_example`."""
    f1 = {name: _stat(list(v.values())) for name, v in per_method_f1.items()}
    fid = {name: _stat(list(v.values())) for name, v in per_method_fid.items()}
    deltas = {}
    for name in BASELINES:
        if name in per_method_fid:
            common = sorted(set(per_method_fid[name]) & set(per_method_fid[method]))
            a = [per_method_fid[method][s] for s in common]
            b = [per_method_fid[name][s] for s in common]
            deltas[name] = {"mean": (sum(a) - sum(b)) / len(common) if common else None,
                            "ci": paired_difference(a, b) if common else None, "n": len(common)}
    return {"n": len(shas), "f1": f1, "fidelity": fid, "gap_won": gap_share(per_method_f1, method),
            "fidelity_vs": deltas}


def score_mean(per: Mapping[str, Mapping[str, Mapping[str, float]]], method: str = METHOD) -> dict[str, Any]:
    """The macro mean F1 over the tasks of `per` (task -> method -> {example sha: F1}; each task weighs the same,
    whatever its n) of every method that answered all of them, and `method`'s macro difference to each baseline on
    the examples both answered, with a stratified paired bootstrap interval
    (:func:`~hf_kvpacket.evaluation.intervals.macro_paired_difference`)."""
    tasks = list(per)
    f1 = {name: {"mean": sum(sum(per[t][name].values()) / len(per[t][name]) for t in tasks) / len(tasks),
                 "n": sum(len(per[t][name]) for t in tasks)}
          for name in COLUMNS[:-1] + (method,) if tasks and all(name in per[t] for t in tasks)}
    f1_vs = {}
    for name in BASELINES:
        if name in f1 and method in f1:
            groups = []
            for t in tasks:
                common = sorted(set(per[t][name]) & set(per[t][method]))
                groups.append(([per[t][method][s] for s in common], [per[t][name][s] for s in common]))
            if all(a for a, _ in groups):
                f1_vs[name] = {"mean": sum(sum(a) / len(a) - sum(b) / len(b) for a, b in groups) / len(groups),
                               "ci": macro_paired_difference(groups), "n": sum(len(a) for a, _ in groups)}
    return {"tasks": list(tasks), "f1": f1, "f1_vs": f1_vs}


def build_scoreboard(results: Sequence[str | os.PathLike], adapters: Sequence[str | os.PathLike],
                     method: str = METHOD, dtype: str | None = "float32") -> list[dict[str, Any]]:
    """One entry per adapter: `{"adapter", "fingerprint", "model", "settings", "tasks": {task: score_task(...)},
    "sources": {task: [folders]}}`, pooled from the results folders under `results` (only `dtype` runs; fp32 by
    default, since bf16 on a CPU changes the reference answers themselves)."""
    # every folder's metadata and records read once, whatever the number of adapters
    everything = [(d, meta, read_records(d / SAMPLES_FILE)) for d in _results_dirs(results) for meta in [_meta(d)]]
    loaded = [run for run in everything if dtype is None or run[1].get("dtype") == dtype]
    board = []
    for adapter in adapters:
        fingerprint = adapter_fingerprint_of(adapter)
        pooled = _pool(loaded, fingerprint, method)
        if pooled is None:
            raise ReportError(f"No {dtype or 'any-dtype'} results of adapter {adapter} (fingerprint {fingerprint}) "
                              f"under {', '.join(map(str, results))}: evaluate it with `kvpacket eval --adapter "
                              f"{adapter} --methods full_recompute,no_recompute,kv_packet ...` first.")
        floor, floor_dtypes = _noise_floor(everything, pooled["settings"]) if dtype is not None else ({}, [])
        if floor:
            pooled["answers"][NOISE_FLOOR] = floor
        tasks = sorted({t for (t, _) in pooled["answers"].get(method, {})})
        per = {t: _per_example(pooled["answers"], t, method) for t in tasks}  # shared by the task rows and the mean
        board.append({"adapter": Path(adapter).as_posix(), "fingerprint": fingerprint,
                      "model": pooled["meta"].get("model"), "settings": pooled["settings"],
                      "noise_floor_dtypes": floor_dtypes,
                      "tasks": {t: _score_row(*per[t], method) for t in tasks},
                      "mean": score_mean({t: per[t][1] for t in tasks}, method),
                      "sources": {t: sorted(pooled["sources"].get(t, ())) for t in tasks}})
    return board


def _cell(stat: Mapping[str, Any] | None, n: int | None = None, fmt: str = ".3f") -> str:
    """`mean [lo, hi]`, with `(n=…)` where the cell covers fewer examples than its row."""
    if not stat or stat.get("mean") is None:
        return "—"
    text = f"{stat['mean']:{fmt}}"
    if stat.get("ci"):
        text += f" [{stat['ci'][0]:{fmt}}, {stat['ci'][1]:{fmt}}]"
    if n is not None and stat.get("n") != n:
        text += f" (n={stat['n']})"
    return text


def _share(g: Mapping[str, Any] | None) -> str:
    if not g or g.get("share") is None:
        return "—"
    text = f"{100 * g['share']:.0f}%"
    if g.get("lo") is not None:
        text += f" [{100 * g['lo']:.0f}%, {100 * g['hi']:.0f}%]"
    return text


def scoreboard_markdown(board: Sequence[Mapping[str, Any]], method: str = METHOD) -> str:
    """Two tables per adapter (token F1 with the gap share; fidelity with the paired differences), 95% intervals."""
    lines = []
    for entry in board:
        s = entry["settings"]
        lines += [f"### {entry['model']}, adapter `{entry['adapter']}` (fingerprint `{entry['fingerprint'][:8]}`)", "",
                  f"{s['dtype']}, greedy, {s['max_new_tokens']} new tokens, split `{s['split']}`; every cell of a row "
                  "is on the same examples (n per row; a baseline that covers fewer says so); 95% bootstrap "
                  "intervals.", "",
                  "| task | n | " + " | ".join(LABELS.get(m, m) for m in COLUMNS[:-1]) + f" | {LABELS.get(method, method)}"
                  " | gap won back |", "|---|---|" + "---|" * (len(COLUMNS) + 1)]
        for task, row in entry["tasks"].items():
            cells = [_cell(row["f1"].get(m), row["n"]) for m in COLUMNS[:-1] + (method,)]
            lines.append(f"| {task} | {row['n']} | " + " | ".join(cells) + f" | {_share(row['gap_won'])} |")
        mean = entry.get("mean") or {}
        if len(entry["tasks"]) > 1 and mean.get("f1"):
            cells = [_cell(mean["f1"].get(m)) for m in COLUMNS[:-1] + (method,)]
            lines.append(f"| **mean over tasks** | {sum(r['n'] for r in entry['tasks'].values())} | "
                         + " | ".join(cells) + " | |")
            if mean.get("f1_vs"):
                lines += ["", f"Mean token F1 over the {len(entry['tasks'])} tasks (each task weighs the same), "
                          f"{LABELS.get(method, method)} minus each baseline on the examples both answered, with a "
                          "paired bootstrap interval stratified by task: "
                          + "; ".join(f"{LABELS.get(b, b)} {_cell(d, fmt='+.3f')}" for b, d in mean["f1_vs"].items())
                          + "."]
        floor = entry.get("noise_floor_dtypes") or []
        lines += ["", "**Fidelity** (token F1 against the full-recompute answer) and KV Packet's paired difference"
                  + (f"; *noise floor*: full recompute in {'/'.join(floor)} against the {s['dtype']} answers, how far "
                     "numerical noise alone moves greedy answers" if floor else "") + ":", "",
                  "| task | " + " | ".join(LABELS.get(m, m) for m in COLUMNS[1:-1]) + f" | {LABELS.get(method, method)}"
                  " | − CacheBlend | − EPIC |" + (" noise floor |" if floor else ""),
                  "|---|" + "---|" * (len(COLUMNS) + 1 + bool(floor))]
        for task, row in entry["tasks"].items():
            cells = [_cell(row["fidelity"].get(m), row["n"]) for m in COLUMNS[1:-1] + (method,)]
            cells += [_cell(row["fidelity_vs"].get(b), fmt="+.3f") for b in BASELINES]
            cells += [_cell(row["fidelity"].get(NOISE_FLOOR), row["n"])] if floor else []
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        lines += ["", "Sources: " + "; ".join(f"{t}: " + ", ".join(f"`{d}`" for d in dirs)
                                              for t, dirs in entry["sources"].items()), ""]
    return "\n".join(lines)


def plot_scoreboard(board: Sequence[Mapping[str, Any]], path: str | os.PathLike, method: str = METHOD) -> Path:
    """One panel per adapter: fidelity per task (groups) and method (bars) with 95% interval whiskers."""
    methods = COLUMNS[1:-1] + (method,)
    fig = _figure(6.5, 3.4 * len(board))
    for k, entry in enumerate(board):
        ax = fig.add_subplot(len(board), 1, k + 1)
        tasks = list(entry["tasks"])
        width = 0.8 / len(methods)
        for j, name in enumerate(methods):
            xs, ys, err = [], [], [[], []]
            for i, task in enumerate(tasks):
                stat = entry["tasks"][task]["fidelity"].get(name)
                if not stat or stat["mean"] is None:
                    continue
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(stat["mean"])
                lo, hi = stat["ci"] or (stat["mean"], stat["mean"])
                err[0].append(stat["mean"] - lo)
                err[1].append(hi - stat["mean"])
            ax.bar(xs, ys, width=width, yerr=err, capsize=2, label=LABELS.get(name, name),
                   color=_COLORS[(j + 1) % len(_COLORS)])
        floors = [(i, entry["tasks"][t]["fidelity"].get(NOISE_FLOOR)) for i, t in enumerate(tasks)]
        floors = [(i, f["mean"]) for i, f in floors if f and f["mean"] is not None]
        for n, (i, y) in enumerate(floors):  # where full recompute alone lands under numerical noise
            ax.hlines(y, i - 0.42, i + 0.42, colors="black", linestyles="dashed", linewidth=1,
                      label=f"noise floor ({'/'.join(entry['noise_floor_dtypes'])} full recompute)" if n == 0 else None)
        ax.set_xticks(range(len(tasks)))
        ax.set_xticklabels([f"{t}\n(n={entry['tasks'][t]['n']})" for t in tasks], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("fidelity to full recompute")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"{entry['model']}: {Path(entry['adapter']).name}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_kvpacket.evaluation.scoreboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results folders, or folders of them (e.g. results)")
    parser.add_argument("--adapter", action="append", required=True, help="adapter folder (repeatable)")
    parser.add_argument("--dtype", default="float32", help="only runs in this dtype ('any' for all; default fp32)")
    parser.add_argument("--markdown", default=None, help="write the tables here (default: print them)")
    parser.add_argument("--plot", default=None, help="write the fidelity figure here (PNG)")
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    board = build_scoreboard(args.results, args.adapter, dtype=None if args.dtype == "any" else args.dtype)
    text = scoreboard_markdown(board)
    if args.plot:
        plot_scoreboard(board, args.plot)
        if args.markdown:
            rel = Path(os.path.relpath(args.plot, Path(args.markdown).parent)).as_posix()
            text += f"\n![Fidelity per task, 95% intervals]({rel})\n"
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")
    else:
        print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(board, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_scoreboard", "score_task", "score_mean", "scoreboard_markdown", "plot_scoreboard", "adapter_fingerprint_of"]
