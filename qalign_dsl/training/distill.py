"""`qalc distill`: train a student of the judge — one backbone pass, a head per question.

The student is a standard `AutoModelForSequenceClassification` over the conversation
(prompt + response) with Σ labels outputs; a softmax within each question's slice is its
answer. It learns the teacher's label distributions (soft targets: the teacher's
uncertainty is signal), NA answers masked out. Rows are split by prompt into training and
held-out sets (a prompt's completions stay together, as GRPO groups do); the held-out loss
picks the best epoch and stops training early.

Resumable: every `checkpoint_every` steps and at each epoch's end the whole training state
(weights, optimizer, schedule, position in the epoch, the best weights so far) is written
atomically to STATE; a rerun with the same inputs and settings continues from it, and a run
killed with kill -9 loses at most `checkpoint_every` steps. The finished folder is built
beside the output and renamed into place, so a reader sees the old student or the new one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from qalign_dsl.evaluate.aggregate import CompiledRubric
from qalign_dsl.evaluate.agreement import Paired, agreement_report, learned_thresholds
from qalign_dsl.ir import Rubric
from qalign_dsl.judge.backends.student import forward_logits, head_log_softmax, head_softmax
from qalign_dsl.judge.student import (
    STUDENT_FILE,
    StudentMeta,
    conversation_text,
    heads_for,
    input_format_of,
    read_meta,
)


class DistillError(ValueError):
    """A problem with the inputs of a distillation (named: the row, the question, the model)."""


@dataclass(frozen=True)
class TeacherExample:
    """One judged conversation: per rubric question the teacher's label distribution, or
    None where the teacher gave no answer (NA, a short-circuit skip: masked, not a label)."""

    id: str
    prompt: Any
    response: str
    answers: tuple[tuple[float, ...] | None, ...]
    group: str = ""  # its prompt: held-out splits and GRPO groups keep a prompt together


@dataclass(frozen=True)
class DistillSettings:
    base: str
    epochs: int = 8
    batch_size: int = 16
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    warmup: float = 0.06  # share of steps
    heldout: float = 0.2
    patience: int = 2  # epochs without a better held-out loss before stopping
    seed: int = 0
    max_length: int | None = None  # default: the base's context
    min_answers: int = 20  # teacher answers a head needs to be trusted
    agreement_target: float = 0.95  # held-out agreement the learned thresholds aim for
    checkpoint_every: int = 50
    device: str = "cpu"
    lora: dict[str, Any] | None = None  # peft LoraConfig settings (merged before saving)
    bootstrap: int = 200
    temperature: float = 1.0  # distillation temperature (soft_loss)

    def fingerprint(self) -> str:
        settings = asdict(self)
        settings.pop("device")  # resuming on another device is the same run
        settings.pop("checkpoint_every")
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class DistillResult:
    meta: StudentMeta
    report: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_step: int = 0
    stopped_early: bool = False


Progress = Callable[[str, int, int, dict[str, float]], None]  # phase, done, total, values


def data_hash(examples: Sequence[TeacherExample]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.id, example.prompt, example.response,
                                  example.answers], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def split_heldout(examples: Sequence[TeacherExample], fraction: float, seed: int
                  ) -> tuple[list[TeacherExample], list[TeacherExample]]:
    """(train, held-out), split by group; at least one group in each when there are two."""
    groups = sorted({e.group for e in examples})
    random.Random(seed).shuffle(groups)
    count = 0 if fraction <= 0 or len(groups) < 2 else \
        min(len(groups) - 1, max(1, round(fraction * len(groups))))
    held = set(groups[:count])
    return ([e for e in examples if e.group not in held],
            [e for e in examples if e.group in held])


def context_of(tokenizer: Any, config: Any) -> int:
    limits = [getattr(config, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    known = [v for v in limits if isinstance(v, int) and 0 < v < 10**8]
    return min(known) if known else 512


def answer_tensors(rubric: Rubric, examples: Sequence[TeacherExample]
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, Q, L] teacher distributions (zero-padded) and [N, Q] answered."""
    width = max(len(q.labels) for q in rubric.questions)
    targets = torch.zeros(len(examples), len(rubric.questions), width)
    answered = torch.zeros(len(examples), len(rubric.questions), dtype=torch.bool)
    for i, example in enumerate(examples):
        for q, answer in enumerate(example.answers):
            if answer is not None:
                targets[i, q, : len(answer)] = torch.tensor(answer)
                answered[i, q] = True
    return targets, answered


def _flat(meta: StudentMeta, targets: torch.Tensor) -> torch.Tensor:
    """[N, Q, L] -> [N, Σ labels] in the heads' column order."""
    return torch.cat([targets[:, q, : len(h.labels)] for q, h in enumerate(meta.heads)], dim=-1)


def _unflat(meta: StudentMeta, flat: torch.Tensor, width: int) -> torch.Tensor:
    out = torch.zeros(flat.shape[0], len(meta.heads), width)
    for q, head in enumerate(meta.heads):
        out[:, q, : len(head.labels)] = flat[:, head.offset: head.offset + len(head.labels)]
    return out


def soften(meta: StudentMeta, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher's distributions at a temperature: softmax(log p / T) within each head.
    A confident judge's 0.9990 and 0.9995 differ little as probabilities and much as
    log-probabilities; softening lets the student learn that ordering (Hinton et al.'s
    distillation temperature), which GRPO's within-group advantages depend on."""
    if temperature == 1.0:
        return targets
    # Answers are written with 6 decimals: a 0.0 stands for "below 5e-7".
    return head_log_softmax(torch.log(targets.clamp(min=5e-7)) / temperature, meta).exp()


def soft_loss(meta: StudentMeta, logits: torch.Tensor, targets: torch.Tensor,
              answered: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy against the teacher's distributions (softened by `temperature`, the
    student's logits by the same; scaled by T² as usual), averaged over answered (sample,
    question) pairs; unanswered ones contribute nothing."""
    log_probabilities = head_log_softmax(logits.float() / temperature, meta)
    per_column = -(soften(meta, targets, temperature) * log_probabilities) * temperature ** 2
    losses = torch.stack([per_column[:, h.offset: h.offset + len(h.labels)].sum(-1)
                          for h in meta.heads], dim=-1)  # [N, Q]
    mask = answered.float()
    return (losses * mask).sum() / mask.sum().clamp(min=1.0)


def _atomic_save(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    os.close(handle)
    torch.save(state, temporary)
    os.replace(temporary, path)


def distill(rubric: Rubric, examples: Sequence[TeacherExample], settings: DistillSettings,
            output: Path, state_dir: Path, teacher: str, progress: Progress | None = None,
            init_from: Path | None = None, warn: Callable[[str], None] | None = None
            ) -> DistillResult:
    """Train the student and write it to `output` (see the module doc). `init_from` starts
    from an earlier student (refreshing it on more answers) instead of `settings.base`."""
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    warn = warn or (lambda message: None)
    # The new head's "newly initialized" report and the save bars are expected noise here.
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    source = str(init_from) if init_from is not None else settings.base
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise DistillError(f"--base {source}: cannot load it ({str(error).splitlines()[0]})"
                           ) from None
    if tokenizer.pad_token_id is None:  # Llama-style tokenizers have none; right padding
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    input_format = input_format_of(tokenizer)
    context = context_of(tokenizer, config)
    max_length = settings.max_length or context
    if max_length > context:
        raise DistillError(f"--max-length {max_length} is more than the base model reads "
                           f"({context} tokens)")
    encoded = [tokenizer(conversation_text(tokenizer, e.prompt, e.response, input_format),
                         add_special_tokens=False)["input_ids"] for e in examples]
    too_long = [(e.id, len(ids)) for e, ids in zip(examples, encoded) if len(ids) > max_length]
    if too_long:
        shown = ", ".join(f"`{i}` ({n} tokens)" for i, n in too_long[:5])
        raise DistillError(f"{len(too_long)} row(s) are longer than the student reads "
                           f"({max_length} tokens): {shown}; use a base with a longer context "
                           "or drop those rows (the student never truncates)")
    train, heldout = split_heldout(examples, settings.heldout, settings.seed)
    ids = {e.id: i for i, e in enumerate(examples)}
    counts = [sum(e.answers[q] is not None for e in train) for q in range(len(rubric.questions))]
    heads = tuple(replace(head, answers=counts[q], reliable=counts[q] >= settings.min_answers)
                  for q, head in enumerate(heads_for(rubric)))
    for head in heads:
        if not head.reliable:
            warn(f"question `{head.id}`: only {head.answers} teacher answer(s) to learn from "
                 f"(at least {settings.min_answers} needed); its head is marked unreliable "
                 "(NA, or escalated with a cascade)")
    meta = StudentMeta(rubric_hash=rubric.hash, heads=heads, teacher=teacher,
                       data_hash=data_hash(examples), base=settings.base,
                       max_length=max_length, input_format=input_format)
    if init_from is not None:
        previous = read_meta(init_from)
        if [h.id for h in previous.heads] != [h.id for h in heads] or \
                [h.fingerprint for h in previous.heads] != [h.fingerprint for h in heads]:
            raise DistillError(f"--resume-from {init_from}: that student has other questions "
                               "than this rubric; distill a new one from --base")

    torch.manual_seed(settings.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=meta.num_labels, id2label=meta.id2label(),
        label2id={v: k for k, v in meta.id2label().items()}, dtype=torch.float32,
        pad_token_id=tokenizer.pad_token_id, ignore_mismatched_sizes=init_from is None)
    if settings.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", **settings.lora))
    device = torch.device(settings.device)
    model.to(device)  # type: ignore[arg-type]

    targets, answered = answer_tensors(rubric, examples)
    flat_targets = _flat(meta, targets)
    train_rows = [ids[e.id] for e in train]
    held_rows = [ids[e.id] for e in heldout]
    steps_per_epoch = max(1, math.ceil(len(train_rows) / settings.batch_size))
    total_steps = steps_per_epoch * settings.epochs
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    warmup = max(1, int(settings.warmup * total_steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup)
        * max(0.0, (total_steps - step) / max(1, total_steps - warmup)))

    run_id = hashlib.sha256((settings.fingerprint() + meta.data_hash + rubric.hash
                             + source).encode()).hexdigest()[:16]
    state_path = state_dir / "state.pt"
    step = epoch = position = bad_epochs = 0
    best_loss = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    resumed_from = 0
    if state_path.is_file():
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        if saved.get("run_id") == run_id:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            step, epoch, position = saved["step"], saved["epoch"], saved["position"]
            bad_epochs, best_loss = saved["bad_epochs"], saved["best_loss"]
            best_state, history = saved["best_state"], saved["history"]
            resumed_from = step
        else:
            warn(f"{state_dir}: a checkpoint of another distillation (other data or "
                 "settings); starting afresh")

    def checkpoint() -> None:
        _atomic_save({"run_id": run_id, "model": model.state_dict(),
                      "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                      "step": step, "epoch": epoch, "position": position,
                      "bad_epochs": bad_epochs, "best_loss": best_loss,
                      "best_state": best_state, "history": history}, state_path)

    def batches(rows: list[int]) -> list[list[int]]:
        return [rows[i:i + settings.batch_size] for i in range(0, len(rows), settings.batch_size)]

    def run(rows: list[int]) -> torch.Tensor:
        return forward_logits(model, [encoded[i] for i in rows], tokenizer.pad_token_id, device)

    def heldout_loss() -> float:
        if not held_rows:
            return math.nan
        model.eval()
        total = weight = 0.0
        with torch.no_grad():
            for rows in batches(held_rows):
                mask = answered[rows]
                loss = soft_loss(meta, run(rows).cpu(), flat_targets[rows], mask,
                                 settings.temperature)
                total += float(loss) * float(mask.sum())
                weight += float(mask.sum())
        model.train()
        return total / max(weight, 1.0)

    stopped_early = False
    model.train()
    while epoch < settings.epochs:
        order = list(train_rows)
        random.Random(settings.seed * 1000 + epoch).shuffle(order)
        epoch_batches = batches(order)
        while position < len(epoch_batches):
            rows = epoch_batches[position]
            loss = soft_loss(meta, run(rows).cpu(), flat_targets[rows], answered[rows],
                             settings.temperature)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            position += 1
            if progress is not None:
                progress("train", step, total_steps, {"loss": loss.item(), "epoch": epoch + 1})
            if step % settings.checkpoint_every == 0:
                checkpoint()
        held = heldout_loss()
        history.append({"epoch": epoch + 1, "step": step, "heldout_loss": held})
        improved = held < best_loss - 1e-4 or math.isnan(held)
        if improved:
            best_loss = held if not math.isnan(held) else best_loss
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            bad_epochs = 0
        else:
            bad_epochs += 1
        epoch, position = epoch + 1, 0
        if progress is not None:
            progress("epoch", epoch, settings.epochs, {"heldout_loss": held})
        if bad_epochs >= settings.patience and epoch < settings.epochs:
            stopped_early = True
            checkpoint()
            break
        checkpoint()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()

    # Held-out answers of the best student: the agreement report and learned thresholds.
    width = targets.shape[-1]
    student = torch.zeros(len(held_rows), len(rubric.questions), width)
    with torch.no_grad():
        done = 0
        for rows in batches(held_rows):
            probabilities = head_softmax(run(rows).float().cpu(), meta)
            student[done: done + len(rows)] = _unflat(meta, probabilities, width)
            done += len(rows)
    reliable = torch.tensor([h.reliable for h in heads], dtype=torch.bool)
    compiled = CompiledRubric(rubric)
    paired = Paired(targets[held_rows], answered[held_rows], student,
                    reliable.expand(len(held_rows), -1).clone(),
                    [examples[i].group for i in held_rows])
    report: dict[str, Any] = agreement_report(
        compiled, paired, bootstrap=settings.bootstrap, seed=settings.seed) \
        if held_rows else {"samples": 0}
    thresholds = learned_thresholds(compiled, paired, settings.agreement_target) \
        if held_rows else [None] * len(heads)
    heads = tuple(replace(h, threshold=t) for h, t in zip(heads, thresholds))
    report.update({"train_samples": len(train_rows), "heldout_samples": len(held_rows),
                   "best_heldout_loss": None if math.isinf(best_loss) else round(best_loss, 5),
                   "epochs": epoch, "stopped_early": stopped_early})
    meta = replace(meta, heads=heads, metrics=report)
    if settings.lora:
        model = model.merge_and_unload()  # a plain checkpoint: loads without peft
    _write_student(model, tokenizer, meta, output,
                   [examples[i] for i in held_rows], rubric, history)
    shutil.rmtree(state_dir, ignore_errors=True)
    return DistillResult(read_meta(output), report, history, resumed_from, stopped_early)


def _write_student(model: Any, tokenizer: Any, meta: StudentMeta, output: Path,
                   heldout: Sequence[TeacherExample], rubric: Rubric,
                   history: list[dict[str, float]]) -> None:
    """The student folder, built beside `output` and renamed into place."""
    from qalign_dsl.judge.backends.student import weights_digest

    output.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.building-"))
    try:
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(str(building))
        tokenizer.save_pretrained(str(building))
        meta = replace(meta, weights_sha256=weights_digest(building))
        (building / STUDENT_FILE).write_text(json.dumps(meta.to_mapping(), indent=2) + "\n",
                                             encoding="utf-8")
        ids = [q.id for q in rubric.questions]
        with (building / "heldout.jsonl").open("w", encoding="utf-8") as sink:
            for example in heldout:
                answers = {qid: dict(zip(q.labels, answer)) for qid, q, answer
                           in zip(ids, rubric.questions, example.answers) if answer is not None}
                sink.write(json.dumps({"id": example.id, "prompt": example.prompt,
                                       "response": example.response, "answers": answers},
                                      ensure_ascii=False) + "\n")
        with (building / "training_log.jsonl").open("w", encoding="utf-8") as sink:
            for entry in history:
                sink.write(json.dumps(entry) + "\n")
        previous = None
        if output.exists():
            previous = output.with_name(f".{output.name}.previous-{os.getpid()}")
            os.replace(output, previous)
        os.replace(building, output)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise



def save_untrained_student(rubric: Rubric, base: str, output: Path, seed: int = 0) -> Path:
    """A student with a fresh head and no training (benchmarks time it: the cost of a pass
    does not depend on what the weights learned). Never a substitute for `distill`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    heads = heads_for(rubric)
    meta = StudentMeta(rubric_hash=rubric.hash, heads=heads, teacher="none (untrained)",
                       data_hash="", base=base, max_length=context_of(tokenizer, _config(base)),
                       input_format=input_format_of(tokenizer))
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=meta.num_labels, id2label=meta.id2label(),
        label2id={v: k for k, v in meta.id2label().items()},
        pad_token_id=tokenizer.pad_token_id, ignore_mismatched_sizes=True)
    _write_student(model, tokenizer, meta, output, [], rubric, [])
    return output


def _config(base: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(base)
