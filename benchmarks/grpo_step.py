"""Time per GRPO step on CPU, split into generation, judging, aggregation and the update,
with our judge (one forward per response prefix, packed questions) vs a paper-style judge
(one `generate` per question on the full prompt, label parsed from the text), and vs a
scalar reward model of the judge's size (one forward per completion: the paper's
Skywork / URM baselines), the cost the rubric reward is measured against — and with a
distilled student of the judge's size (`qalc distill`: one forward per completion, a head
per question) alone and in a cascade that sends ~10% of its answers to the full judge.

    python benchmarks/grpo_step.py [--steps 3] [--constitution constitutions/tutorial.qal]

A real TRL GRPOTrainer on tiny local models (random policy, random judge: timing only).
The last line is JSON: the judge's share of the step for both judges and the step-time ratio
(`ratio`: paper / ours), plus the rubric reward's cost relative to the scalar reward model
(`ours_vs_scalar_reward_ratio`: reward seconds per step, ours / scalar RM), the student's
(`student_vs_scalar_reward_ratio`, target ≤ 1.5) and the full judge's against the student's
(`teacher_vs_student_reward_ratio`). The student is untrained here: a pass costs the same
whatever its weights learned (benchmarks/distill.py measures a trained one).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qalign_dsl.ir import Rubric  # noqa: E402
from qalign_dsl.judge.backend import Scores, ScoringJob  # noqa: E402
from qalign_dsl.judge.backends.student import StudentBackend  # noqa: E402
from qalign_dsl.judge.backends.transformers import TransformersBackend  # noqa: E402
from qalign_dsl.judge.runtime import Judge, Sample  # noqa: E402
from qalign_dsl.lang.compiler import compile_file  # noqa: E402
from qalign_dsl.training.distill import save_untrained_student  # noqa: E402
from qalign_dsl.training.reward import QalignReward  # noqa: E402
from qalign_dsl.training.reward_model import ScalarRewardModel  # noqa: E402
from qalign_dsl.training.tiny import build_llama, build_reward_model, build_tokenizer  # noqa: E402


class PaperStyleBackend(TransformersBackend):
    """QA-LIGN's judge: one greedy generate per question, the label parsed from the text."""

    @torch.inference_mode()
    def score(self, jobs: list[ScoringJob]) -> list[Scores]:
        results: list[Scores] = []
        for job in jobs:
            scores: Scores = []
            for suffix, labels in zip(job.suffixes, job.labels):
                ids = torch.tensor([self.encode(job.head + suffix)], device=self.device)
                out = self.model.generate(ids, attention_mask=torch.ones_like(ids),
                                          max_new_tokens=4, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
                text = str(self.tokenizer.decode(out[0, ids.shape[1]:]))
                found = re.search(r"\b(" + "|".join(map(re.escape, labels)) + r")\b", text)
                scores.append(
                    [1.0 if found and found.group(1) == label else 0.0 for label in labels]
                    if found
                    else "no label in the generated answer"
                )
            results.append(scores)
        return results


class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"generation": 0.0, "judging": 0.0, "aggregation": 0.0}

    def wrap(self, name: str, function: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return timed


def run(kind: str, document: dict[str, Any], policy: Path, judge_path: Any, steps: int,
        prompts: list[str], output: Path) -> dict[str, float]:
    import datasets
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    timers = Timers()
    reward: Any
    if kind == "scalar":  # judge_path is the reward model here
        scalar = ScalarRewardModel(str(judge_path), "scalar_rm", device="cpu")
        reward = timers.wrap("judging", scalar)
    elif kind in ("student", "cascade"):  # judge_path is (student folder, teacher)
        student_path, teacher_path, threshold = judge_path
        teacher = Judge(document, TransformersBackend(str(teacher_path))) \
            if kind == "cascade" else None
        judge = Judge(document, StudentBackend(str(student_path)), teacher=teacher,
                      below_confidence=threshold)
        reward = QalignReward(document, judge)
        reward.rubric.evaluate = timers.wrap("aggregation", reward.rubric.evaluate)
        counts = {"escalated": 0, "answers": 0}
        score = judge.score

        def counted(samples: Any, *args: Any, **kwargs: Any) -> Any:
            result = score(samples, *args, **kwargs)
            counts["escalated"] += result.escalated
            counts["answers"] += result.escalated + result.student_answers
            return result

        reward.judge.score = timers.wrap("judging", counted)
    else:
        backend_class = TransformersBackend if kind == "ours" else PaperStyleBackend
        backend = backend_class(str(judge_path))
        reward = QalignReward(document, Judge(document, backend))
        reward.judge.score = timers.wrap("judging", reward.judge.score)
        reward.rubric.evaluate = timers.wrap("aggregation", reward.rubric.evaluate)
    model = AutoModelForCausalLM.from_pretrained(str(policy))
    model.generate = timers.wrap("generation", model.generate)  # type: ignore[method-assign]
    config = trl.GRPOConfig(output_dir=str(output / kind), use_cpu=True, bf16=False,
                            max_steps=steps, per_device_train_batch_size=8, num_generations=4,
                            generation_batch_size=8, max_completion_length=48,
                            logging_steps=1, report_to=[], save_strategy="no", seed=0,
                            disable_tqdm=True)
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=config,
        train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=AutoTokenizer.from_pretrained(str(policy)),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    result = dict(timers.seconds)
    result["update"] = total - sum(timers.seconds.values())
    result["step"] = total / steps
    averaged = {key: value / steps if key != "step" else value for key, value in result.items()}
    if kind == "cascade":
        averaged["escalated_share"] = counts["escalated"] / max(counts["answers"], 1)
    return averaged


def confidence_quantile(document: dict[str, Any], student: Path, prompts: list[str],
                        share: float) -> float:
    """The student's confidence below which `share` of its answers fall, on texts like the
    policy's: the cascade threshold that escalates about that share."""
    judge = Judge(document, StudentBackend(str(student)))
    samples = [Sample(p, f"Answer {i}: " + p[::-1]) for i, p in enumerate(prompts)]
    result = judge.score(samples)
    confidences = sorted(float(result.probabilities[b, q].max())
                         for b in range(len(samples)) for q in range(result.answered.shape[1]))
    return confidences[int(share * (len(confidences) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--constitution", type=Path, default=ROOT / "constitutions" / "tutorial.qal"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    compiled = compile_file(args.constitution)
    assert compiled.document is not None
    # A random policy cannot write the draft/reflection/revision format, so every completion
    # would get the format penalty and nothing would be judged. Judge each whole completion
    # once instead (QA-LIGN judges draft and revision: the real judge cost is twice this).
    document = dict(compiled.document, output_format=None, revision_reward=None)
    prompts = [f"Tell me about topic {i}, step by step." for i in range(16)]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        tokenizer = build_tokenizer(root / "tok", prompts + [args.constitution.read_text()])
        policy = build_llama(root / "policy", tokenizer)
        judge = build_llama(root / "judge", tokenizer, hidden_size=256, layers=4, heads=4)
        # The scalar reward model: the judge's architecture and size, a one-logit head.
        scalar_rm = build_reward_model(root / "rm", tokenizer, hidden_size=256, layers=4, heads=4)
        # The student: the judge's backbone as a sequence classifier, a head per question.
        student = save_untrained_student(Rubric.of(document), str(judge), root / "student")
        threshold = confidence_quantile(document, student, prompts, 0.10)
        paths: dict[str, Any] = {"ours": judge, "paper": judge, "scalar": scalar_rm,
                                 "student": (student, judge, 0.0),
                                 "cascade": (student, judge, threshold)}
        results = {kind: run(kind, document, policy, paths[kind], args.steps, prompts, root)
                   for kind in ("ours", "paper", "scalar", "student", "cascade")}
    for kind, split in results.items():
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in split.items()
                          if k not in ("step", "escalated_share"))
        share = (split["judging"] + split["aggregation"]) / split["step"]
        label = "scalar RM" if kind == "scalar" else kind
        print(f"{label:9s}: {split['step']:.2f} s/step ({parts}); reward share {share:.0%}")
    ours, paper, scalar = results["ours"], results["paper"], results["scalar"]
    student, cascade = results["student"], results["cascade"]
    ours_reward = ours["judging"] + ours["aggregation"]
    scalar_reward = scalar["judging"] + scalar["aggregation"]
    student_reward = student["judging"] + student["aggregation"]
    cascade_reward = cascade["judging"] + cascade["aggregation"]
    print(f"the student costs {student_reward / scalar_reward:.2f}x the scalar reward model "
          f"per step; the full judge {ours_reward / student_reward:.1f}x the student; the "
          f"cascade ({cascade['escalated_share']:.0%} of answers escalated) "
          f"{cascade_reward / scalar_reward:.1f}x the scalar RM")
    print(f"the rubric reward ({len(document['questions'])} questions) costs "
          f"{ours_reward / scalar_reward:.1f}x a scalar reward model of the judge's size per "
          f"step; the whole step {ours['step'] / scalar['step']:.2f}x")
    print(json.dumps({
        "name": "grpo_step", "questions": len(document["questions"]), "steps": args.steps,
        "ours_step_s": round(ours["step"], 3), "paper_step_s": round(paper["step"], 3),
        "ours_judge_share": round((ours["judging"] + ours["aggregation"]) / ours["step"], 3),
        "paper_judge_share": round((paper["judging"] + paper["aggregation"]) / paper["step"], 3),
        "judge_ratio": round(paper["judging"] / ours["judging"], 1),
        "ratio": round(paper["step"] / ours["step"], 2),
        "scalar_step_s": round(scalar["step"], 3),
        "ours_reward_s": round(ours_reward, 3), "scalar_reward_s": round(scalar_reward, 3),
        "ours_vs_scalar_step_ratio": round(ours["step"] / scalar["step"], 2),
        "ours_vs_scalar_reward_ratio": round(ours_reward / scalar_reward, 1),
        "student_reward_s": round(student_reward, 4), "cascade_reward_s": round(cascade_reward, 4),
        "cascade_escalated_share": round(cascade["escalated_share"], 3),
        "student_vs_scalar_reward_ratio": round(student_reward / scalar_reward, 2),
        "cascade_vs_scalar_reward_ratio": round(cascade_reward / scalar_reward, 2),
        "teacher_vs_student_reward_ratio": round(ours_reward / student_reward, 1),
    }))


if __name__ == "__main__":
    main()
