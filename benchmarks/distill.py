"""`qalc distill` on CPU: how long a student takes to train, how well it agrees with its
teacher as the number of teacher-judged rows grows (a learning curve), and how much cheaper
it judges than the teacher.

    python benchmarks/distill.py [--sizes 100,200,400] [--heldout 100]

The teacher is the tests' micro-judge (a tiny Llama trained in seconds to fail
tests/data/judge/micro.qal's harmlessness questions on harm words); the student a tiny
Llama sequence classifier; agreement is measured on each run's held-out split (20% of its
prompts). Judging cost is timed on the same separate rows for the teacher and the largest
student. The last line is JSON: the teacher's and the student's seconds to judge those rows
(`qalc score`, model loading included) and their ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qalign_dsl.cli import main as qalc  # noqa: E402
from qalign_dsl.training.tiny import (  # noqa: E402
    BASE_CORPUS,
    MICRO_PROMPTS,
    build_llama,
    build_tokenizer,
    feature_responses,
    micro_judge_examples,
    train_micro_judge,
)

MICRO = ROOT / "tests" / "data" / "judge" / "micro.json"


def rows(count: int, seed: int, start: int = 0) -> list[dict[str, object]]:
    return [{"id": f"r{start + n}", "prompt": MICRO_PROMPTS[n % 3] + f" ({n % 15})",
             "response": response}
            for n, response in enumerate(feature_responses(count, seed))]


def write(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    code = qalc(argv)
    if code != 0:
        raise SystemExit(f"qalc {argv[0]} failed with exit code {code}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,200,400",
                        help="teacher-judged training rows per point of the curve")
    parser.add_argument("--heldout", type=int, default=100,
                        help="rows both judges score for the cost comparison")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    document = json.loads(MICRO.read_text())
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        # The tests' recipe (tests/judge_fixtures.py): the tokenizer knows the rubric's
        # prompts, and the judge sees a few longer harmful and harmless sentences too.
        corpus = (list(BASE_CORPUS) + feature_responses(200, 7) + MICRO_PROMPTS
                  + [p.read_text() for p in (ROOT / "constitutions").glob("*.qal")]
                  + [(ROOT / "tests" / "data" / "judge" / "micro.qal").read_text()])
        tokenizer = build_tokenizer(root / "tok", corpus)
        base = build_llama(root / "base", tokenizer)
        teacher = build_llama(root / "teacher", tokenizer, hidden_size=128, heads=2)
        harmful = ["Step one: buy the poison. Step two: put the poison in the drink.",
                   "Use the knife and the weapon to attack people at night."]
        benign = ["Drink water, sleep well and take a short walk every day.",
                  "Water the plants in the morning and keep them in the sun."]
        train_micro_judge(teacher, document, micro_judge_examples(
            document, extra_harmful=harmful, extra_benign=benign), steps=300,
            learning_rate=3e-3)
        (root / "micro.json").write_text(MICRO.read_text())
        training = rows(max(sizes), 41)
        held = rows(args.heldout, 42, start=100_000)
        write(root / "all.jsonl", training + held)
        teacher_s = timed(["score", str(root / "micro.json"), str(write(root / "held.jsonl",
                                                                           held)),
                           "--judge", str(teacher), "-o", str(root / "held-scored.jsonl"),
                           "--no-cache"])
        timed(["score", str(root / "micro.json"), str(root / "all.jsonl"), "--judge",
               str(teacher), "-o", str(root / "scored.jsonl"), "--no-cache"])
        scored = [json.loads(line) for line in (root / "scored.jsonl").read_text().splitlines()]
        by_id = {r["id"]: r for r in scored}
        curve = []
        student_s = 0.0
        for size in sizes:
            chosen = training[:size]
            data = write(root / f"data-{size}.jsonl", chosen)
            answers = write(root / f"answers-{size}.jsonl", [by_id[str(r["id"])] for r in chosen])
            out = root / f"student-{size}"
            seconds = timed(["distill", str(root / "micro.json"), str(data), "--base", str(base),
                             "--teacher-answers", str(answers), "-o", str(out),
                             "--learning-rate", "2e-3", "--epochs", "12", "--patience", "3",
                             "--json"])
            metrics = json.loads((out / "qalign_student.json").read_text())["metrics"]
            student_s = timed(["score", str(root / "micro.json"), str(root / "held.jsonl"),
                               "--backend", "student", "--judge", str(out), "-o",
                               str(root / f"held-student-{size}.jsonl"), "--no-cache"])
            point = {"rows": size, "train_s": round(seconds, 1),
                     "agreement": metrics["mean_question_agreement"],
                     "reward_spearman": metrics["reward_spearman"],
                     "reward_pearson": metrics["reward_pearson"],
                     "advantage_sign_agreement": metrics["advantage_sign_agreement"]}
            curve.append(point)
            print(json.dumps(point), file=sys.stderr)
    for point in curve:
        print(f"{point['rows']:5d} rows: trained in {point['train_s']:5.1f} s; held-out "
              f"agreement {point['agreement']}, reward Spearman {point['reward_spearman']}, "
              f"Pearson {point['reward_pearson']}, advantage signs "
              f"{point['advantage_sign_agreement']}")
    print(json.dumps({"name": "distill", "heldout_rows": args.heldout, "curve": curve,
                      "baseline_s": round(teacher_s, 3), "ours_s": round(student_s, 3),
                      "ratio": round(teacher_s / student_s, 2)}))


if __name__ == "__main__":
    main()
