"""`qalc score` locally and with `--executor ray` (1 and 2 actors), on the same rows and the
same judge, on this machine:

    python benchmarks/ray_score.py                  # 64 rows, a random ~3M-parameter Llama
    python benchmarks/ray_score.py --rows 256 --hidden 512

Each arm is the whole command a user runs (`python -m qalign_dsl score …`, model load
included). The Ray arms join one cluster started beforehand with `ray start --head` (its
start is timed apart, `cluster_start_s`), as a job joins a running cluster. Every arm runs
torch on one thread per process (the local run with OMP_NUM_THREADS=1, each actor with
`--cpus-per-actor 1`, which Ray turns into OMP_NUM_THREADS=1): on a small judge torch's
intra-op threads can cost more than they give (seen here on 2 busy cores: 14 s with two
threads, 5 s with one, for the same rows), and unequal thread counts would credit Ray with
a threading effect.

On one small machine Ray cannot add compute, only its overhead (actor processes that import
torch and load the judge, the pipeline, the object store): `ratio` = ray_1_s / local_s says
what that costs here. Scaling out needs more machines or GPUs than this benchmark has; with
N GPU actors the judging runs N-wide. The outputs of all three arms are checked to hold the
same ids in the same order. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qalign_dsl.training.tiny import build_llama, build_tokenizer  # noqa: E402

TOPICS = ["bread", "taxes", "a bicycle", "the moon", "python lists", "a garden", "tea"]


def write_rows(path: Path, count: int) -> None:
    rows = [{"id": f"r{i}", "prompt": f"Tell me about {TOPICS[i % len(TOPICS)]} ({i}).",
             "response": f"Here is what I know about {TOPICS[i % len(TOPICS)]}. " * (3 + i % 5)}
            for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256, help="the judge's hidden size")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    arguments = parser.parse_args()
    cpus = os.cpu_count() or 2
    ray = str(Path(sys.executable).with_name("ray"))
    with tempfile.TemporaryDirectory(prefix="qray", dir="/tmp") as folder:
        work = Path(folder)
        tokenizer = build_tokenizer(work / "tokenizer", TOPICS)
        model = build_llama(work / "model", tokenizer, hidden_size=arguments.hidden,
                            layers=arguments.layers, heads=max(1, arguments.hidden // 64))
        data = work / "data.jsonl"
        write_rows(data, arguments.rows)

        def score(out: str, *more: str) -> list[str]:
            return [sys.executable, "-m", "qalign_dsl", "score",
                    str(ROOT / "compiled" / "tutorial.json"), str(data), "--model", str(model),
                    "--no-cache", "--batch-size", str(arguments.batch_size), "-o",
                    str(work / out), *more]

        local_s = timed(score("local.jsonl"))
        port = free_port()
        started = time.perf_counter()
        head = subprocess.Popen(
            [ray, "start", "--head", "--block", "--num-cpus", str(cpus), "--node-ip-address",
             "127.0.0.1", "--port", str(port), "--include-dashboard", "false",
             "--disable-usage-stats", "--temp-dir", str(work / "ray")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "RAY_AUTH_MODE": "disabled"})  # loopback, for this run only
        address = f"127.0.0.1:{port}"
        try:
            while subprocess.run([ray, "status", "--address", address],
                                 capture_output=True).returncode != 0:
                if head.poll() is not None:
                    sys.exit("ray start --head failed")
                time.sleep(0.5)
            cluster_start_s = time.perf_counter() - started
            ray_options = ["--executor", "ray", "--ray-address", address,
                           "--batch-rows", str(4 * arguments.batch_size)]
            ray_1_s = timed(score("ray1.jsonl", *ray_options, "--actors", "1"))
            ray_2_s = timed(score("ray2.jsonl", *ray_options, "--actors", "2"))
        finally:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        expected = ids(work / "local.jsonl")
        assert ids(work / "ray1.jsonl") == expected == ids(work / "ray2.jsonl")
    rows = arguments.rows
    print(f"{rows} rows, {cpus} CPUs: local {local_s:.1f} s ({rows / local_s:.2f} rows/s); "
          f"ray, 1 actor {ray_1_s:.1f} s ({rows / ray_1_s:.2f} rows/s); "
          f"ray, 2 actors {ray_2_s:.1f} s ({rows / ray_2_s:.2f} rows/s); "
          f"cluster start {cluster_start_s:.1f} s (not in the Ray times)")
    print(json.dumps({"name": "ray_score", "rows": rows, "cpus": cpus,
                      "local_s": round(local_s, 2), "ray_1_s": round(ray_1_s, 2),
                      "ray_2_s": round(ray_2_s, 2),
                      "cluster_start_s": round(cluster_start_s, 2),
                      "ratio": round(ray_1_s / local_s, 3)}))


if __name__ == "__main__":
    main()
