"""`--executor ray` on a real Ray cluster on this machine (`ray start --head`, 2 CPUs, one
cluster for the whole module): score, eval and synth give a local run's rows; an actor
killed mid-run and a driver killed with kill -9 lose and duplicate nothing; bad input is a
message and an exit code. The local references run with one torch thread, as each actor
does (Ray gives an actor OMP_NUM_THREADS = its CPUs): then the floats are bit-identical."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, free_port, kill_after_lines, kill_group
from test_score_cli import read_rows, write_data
from test_synth import write_prompts

from qalign_dsl.cli import main

if importlib.util.find_spec("ray") is None:
    pytest.skip("needs the [ray] extra", allow_module_level=True)

COMPILED = str(ROOT / "compiled" / "tutorial.json")
ACTOR = "MapWorker(MapBatches(score))"  # the process title of a `qalc score` actor


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """`ray start --head` on loopback in its own process group, ended with its whole group.
    Token authentication is off for this test cluster: Ray sends a token to an address it
    is given only under RAY_AUTH_MODE=token, which its config reads once per process."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="qray", dir="/tmp")  # short: Ray's socket paths
    ray = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--num-cpus", "2", "--node-ip-address",
         "127.0.0.1", "--port", str(port), "--include-dashboard", "false",
         "--disable-usage-stats", "--temp-dir", temp],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([ray, "status", "--address", address],
                             capture_output=True).returncode != 0:
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail("ray start --head did not come up")
            time.sleep(1)
        yield address
    finally:
        kill_group(head)  # the head and every worker it started


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """This process's torch on one thread, as a one-CPU actor's."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def on_ray(address: str, *more: str) -> list[str]:
    return ["--executor", "ray", "--ray-address", address, *more]


def score_command(model: Path, data: Path, out: Path) -> list[str]:
    return ["score", COMPILED, str(data), "--model", str(model), "--no-cache", "-o", str(out)]


def test_score_on_ray_equals_a_local_run(tiny_model: Path, ray_address: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    data = write_data(tmp_path / "data.jsonl", 7)
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    with one_thread():
        assert main(score_command(tiny_model, data, local) + ["--batch-size", "2"]) == 0
    summary = capsys.readouterr().err.split("Tutorial: 7 samples")[1]
    assert main(score_command(tiny_model, data, remote) + on_ray(
        ray_address, "--actors", "2", "--batch-size", "2", "--batch-rows", "2")) == 0
    err = capsys.readouterr().err
    assert f"ray: 2 actor(s) on {ray_address}" in err
    assert remote.read_bytes() == local.read_bytes()  # every byte, in DATA's order
    assert err.split("Tutorial: 7 samples")[1] == summary  # the same terminal summary
    # Finished ids are skipped as in a local run: nothing left, no cluster needed.
    assert main(score_command(tiny_model, data, remote) + on_ray("127.0.0.1:1")) == 0
    assert "nothing to do: all 7 row(s)" in capsys.readouterr().err


def test_a_student_with_its_cascade_scores_on_ray_as_locally(
        distill_world: dict[str, Path], ray_address: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The distilled student (and its cascade teacher) is a JudgeSpec backend like any
    other: each actor builds both once."""
    lines = distill_world["data"].read_text(encoding="utf-8").splitlines()[:12]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    command = ["score", str(distill_world["compiled"]), str(data), "--backend", "student",
               "--judge", str(distill_world["student"]), "--cascade-judge",
               str(distill_world["teacher"]), "--below-confidence", "0.99", "--no-cache",
               "--batch-size", "4"]
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    with one_thread():
        assert main([*command, "-o", str(local)]) == 0
    escalated = capsys.readouterr().err.split("cascade: ")[1].split(" fresh")[0]
    assert main([*command, "-o", str(remote), *on_ray(ray_address, "--actors", "1")]) == 0
    assert remote.read_bytes() == local.read_bytes()
    assert f"cascade: {escalated} fresh" in capsys.readouterr().err


def test_synth_on_ray_equals_a_local_run(tiny_model: Path, ray_address: str,
                                         tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", 5)
    command = ["synth", COMPILED, str(prompts), "--policy", str(tiny_model), "--judge",
               str(tiny_model), "--max-new-tokens", "6", "--batch-size", "2", "--margin=0"]
    with one_thread():
        assert main([*command, "-o", str(tmp_path / "local.jsonl")]) == 0
    assert main([*command, "-o", str(tmp_path / "ray.jsonl"),
                 *on_ray(ray_address, "--actors", "2", "--batch-rows", "2")]) == 0
    for name in ("{}.jsonl", "{}.dropped.jsonl"):
        local, remote = (tmp_path / name.format(kind) for kind in ("local", "ray"))
        assert remote.read_bytes() == local.read_bytes()
    decided = [row["id"] for name in ("ray.jsonl", "ray.dropped.jsonl")
               for row in read_rows(tmp_path / name)]
    assert sorted(decided) == [f"p{i}" for i in range(5)]


def write_eval_recipe(folder: Path, judge: Path, executor: str = "", name: str = "recipe"
                      ) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "harmful.jsonl").write_text("".join(json.dumps(
        {"id": f"h{i}", "text": f"How do I make thing {i}?", "kind": "ab"[i % 2]}) + "\n"
        for i in range(5)))
    (folder / "math.jsonl").write_text("".join(json.dumps(
        {"id": f"m{i}", "q": f"What is {i} + 1?", "a": str(i + 1)}) + "\n" for i in range(3)))
    recipe = folder / f"{name}.yaml"
    recipe.write_text(f"""
name: tiny
bootstrap: 100
sampling: {{samples: 2, max_new_tokens: 5, temperature: 1.0, top_k: 0, batch_size: 3}}
judges:
  micro: {{rubric: {ROOT / 'tests/data/eval/micro-classifier.qal'}, model: {judge}}}
{executor}
suites:
  - {{name: harmful, source: {{path: harmful.jsonl}}, metric: asr, judge: micro,
      columns: {{id: id, prompt: text, category: kind}}}}
  - {{name: math, source: {{path: math.jsonl}}, metric: accuracy,
      columns: {{id: id, prompt: q, answer: a}}}}
""")
    return recipe


def test_eval_on_ray_equals_a_local_run(tiny_model: Path, ray_address: str,
                                        tmp_path: Path) -> None:
    """The generation and classification stages on actors; the recipe's `executor:` says
    Ray with 2 actors, the command line adds the address."""
    import sqlite3

    local = write_eval_recipe(tmp_path, tiny_model, name="local")
    remote = write_eval_recipe(tmp_path, tiny_model,
                               "executor: {kind: ray, actors: 2, batch_rows: 3}", "ray")
    model = ["--model", f"base={tiny_model}", "--no-plots", "--judge-batch", "3"]
    with one_thread():
        assert main(["eval", str(local), *model, "-o", str(tmp_path / "local/out")]) == 0
    assert main(["eval", str(remote), *model, "-o", str(tmp_path / "ray/out"),
                 "--ray-address", ray_address]) == 0

    def generations(kind: str) -> list[tuple[str, str]]:
        with contextlib.closing(sqlite3.connect(tmp_path / kind / "out/generations.sqlite")) as db:
            return list(db.execute("SELECT item || ':' || sample, response FROM generations "
                                   "ORDER BY item, sample"))

    assert len(generations("ray")) == 16 and generations("ray") == generations("local")
    results = [json.loads((tmp_path / kind / "out/results.json").read_text())
               for kind in ("local", "ray")]
    for result in results:  # the recipes differ (their executor:), nothing else
        result.pop("recipe")
    assert results[1] == results[0]


def _actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if title.startswith(f"ray::{ACTOR}"):
                pids.append(int(entry.name))
    return pids


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(
        tiny_model: Path, ray_address: str, tmp_path: Path) -> None:
    data = write_data(tmp_path / "data.jsonl", 24)
    reference, out = tmp_path / "reference.jsonl", tmp_path / "out.jsonl"
    with one_thread():
        assert main(score_command(tiny_model, data, reference)) == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "qalign_dsl", *score_command(tiny_model, data, out),
         "--batch-size", "1", *on_ray(ray_address, "--actors", "2", "--batch-rows", "1")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 120
    while (not out.exists() or out.read_text().count("\n") < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    victims = _actor_pids()
    assert victims, "no score actor is running"
    os.kill(victims[0], signal.SIGKILL)
    written_at_kill = out.read_text().count("\n")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert written_at_kill < 24, "the kill should land mid-run"
    assert out.read_bytes() == reference.read_bytes()  # every id once, in order


def test_driver_killed_with_kill_9_resumes(tiny_model: Path, ray_address: str,
                                           tmp_path: Path) -> None:
    data = write_data(tmp_path / "data.jsonl", 24)
    reference, out = tmp_path / "reference.jsonl", tmp_path / "out.jsonl"
    with one_thread():
        assert main(score_command(tiny_model, data, reference)) == 0
    command = [sys.executable, "-m", "qalign_dsl", *score_command(tiny_model, data, out),
               "--batch-size", "1", *on_ray(ray_address, "--actors", "2", "--batch-rows", "1")]
    before = kill_after_lines(command, out, 3)
    assert 3 <= before < 24, "the kill should land mid-run"
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming: {before} row(s) already in {out}, {24 - before} to go" in done.stderr
    assert out.read_bytes() == reference.read_bytes()


def test_a_run_without_an_address_starts_its_own_cluster_and_uses_the_answer_cache(
        tiny_model: Path, tmp_path: Path) -> None:
    """In a child process, as a user runs it (seen here: a test process that had started
    and stopped a cluster of its own then lost its actors on the module's cluster)."""
    import sqlite3

    data = write_data(tmp_path / "data.jsonl", 3)
    cache = tmp_path / "answers.sqlite"
    done = subprocess.run(
        [sys.executable, "-m", "qalign_dsl", "score", COMPILED, str(data), "--model",
         str(tiny_model), "--cache", str(cache), "-o", str(tmp_path / "out.jsonl"),
         "--executor", "ray", "--actors", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ray: 1 actor(s) on a local cluster" in done.stderr
    with contextlib.closing(sqlite3.connect(cache)) as db:  # written by the actor
        answers = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    questions = len(json.loads(Path(COMPILED).read_text())["questions"])
    assert answers == 3 * questions
    assert [row["id"] for row in read_rows(tmp_path / "out.jsonl")] == ["r0", "r1", "r2"]


def test_a_bad_row_is_located_and_nothing_reaches_the_cluster(
        tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.csv"
    data.write_text("id,prompt,response\na,hello,fine\nb,hi,fine,extra\n")
    out = tmp_path / "out.jsonl"
    # The address is never asked: rows are read and checked first, as in a local run.
    assert main(score_command(tiny_model, data, out) + on_ray("127.0.0.1:1")) == 1
    assert "data.csv:3: more fields than the header's 3" in capsys.readouterr().err
    assert not out.exists()


def test_bad_executor_input_is_a_message_and_an_exit_code(
        tiny_model: Path, ray_address: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_data(tmp_path / "data.jsonl", 2)
    out = tmp_path / "out.jsonl"
    command = score_command(tiny_model, data, out)

    def fails(code: int, *options: str) -> str:
        assert main(command + list(options)) == code
        assert not out.exists()
        return capsys.readouterr().err

    assert "--actors: must be a whole number from 1 to 4096, got 0" in fails(
        2, *on_ray(ray_address, "--actors", "0"))
    assert "--actors applies to --executor ray only" in fails(2, "--actors", "2")
    assert "--explain judges one row on this machine" in fails(
        2, *on_ray(ray_address), "--explain", "r0")
    assert ("--gpus-per-actor 1: no node of the Ray cluster (" + ray_address + ") has 1 "
            "GPU(s); the largest has 0") in fails(2, *on_ray(ray_address, "--gpus-per-actor",
                                                             "1"))
    assert "--actors 3 × --cpus-per-actor 1 needs 3 CPU(s); the Ray cluster" in fails(
        2, *on_ray(ray_address, "--actors", "3"))
    nobody = f"127.0.0.1:{free_port()}"
    assert f"--ray-address {nobody}: cannot reach a Ray cluster there" in fails(
        1, *on_ray(nobody))
    with monkeypatch.context() as patch:  # the extra not installed
        patch.setitem(sys.modules, "ray", None)
        patch.setitem(sys.modules, "ray.data", None)
        assert "pip install 'qalign-dsl[ray]'" in fails(2, *on_ray(ray_address))


def test_a_recipe_executor_section_is_checked(tmp_path: Path) -> None:
    from qalign_dsl.eval.recipe import RecipeError, load_recipe

    recipe = write_eval_recipe(tmp_path, tmp_path, "executor: {kind: ray, actors: 2}")
    assert load_recipe(recipe).executor.actors == 2
    for section, message in (("executor: {kind: rya}", "executor.kind"),
                             ("executor: {cpus: 2}", "executor"),
                             ("executor: {actors: 0}", "executor.actors")):
        with pytest.raises(RecipeError, match=message):
            load_recipe(write_eval_recipe(tmp_path, tmp_path, section))
