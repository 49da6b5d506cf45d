"""`qalc score --shard I/N` + `qalc merge`: the merged output equals an unsharded run's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT
from test_score_cli import write_data

from qalign_dsl.cli import main

COMPILED = str(ROOT / "compiled" / "tutorial.json")


def _score_whole_and_shards(model: Path, data: Path, count: int, suffix: str
                            ) -> tuple[Path, list[str]]:
    """Score DATA once whole and once as `count` shards, beside DATA: (whole, parts)."""
    judge = ["--model", str(model), "--no-cache", "--batch-size", "2"]
    whole = data.with_name("whole" + suffix)
    assert main(["score", COMPILED, str(data), *judge, "-o", str(whole)]) == 0
    parts = []
    for i in range(count):
        part = data.with_name(f"part{i}{suffix}")
        assert main(["score", COMPILED, str(data), *judge, "--shard", f"{i}/{count}",
                     "-o", str(part)]) == 0
        parts.append(str(part))
    return whole, parts


def test_shards_merge_to_the_unsharded_output(tiny_model: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    data = write_data(tmp_path / "data.jsonl", 7)
    whole, parts = _score_whole_and_shards(tiny_model, data, 3, ".jsonl")
    assert len((tmp_path / "part0.jsonl").read_text().splitlines()) == 3  # rows 0, 3, 6
    merged = tmp_path / "merged.jsonl"
    assert main(["merge", str(data), *reversed(parts), "-o", str(merged)]) == 0
    assert merged.read_bytes() == whole.read_bytes()

    # A missing shard, an overlap: clear errors, exit 1, nothing written.
    capsys.readouterr()
    assert main(["merge", str(data), parts[0], parts[1], "-o", str(tmp_path / "x.jsonl")]) == 1
    assert "row(s) of" in capsys.readouterr().err
    assert main(["merge", str(data), *parts, parts[0]]) == 1
    assert "shards must not overlap" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("shard", ["3/3", "a/2", "1", "-1/2"])
def test_bad_shard_is_a_usage_error(shard: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["score", COMPILED, str(tmp_path / "d.jsonl"), "--model", "m", "--shard", shard])
    assert exit_info.value.code == 2


def test_parquet_shards_merge_to_the_unsharded_parquet(tiny_model: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    import pyarrow.parquet as pq

    data = write_data(tmp_path / "data.jsonl", 4)
    whole, parts = _score_whole_and_shards(tiny_model, data, 2, ".parquet")
    merged = tmp_path / "merged.parquet"
    assert main(["merge", str(data), parts[1], parts[0], "-o", str(merged)]) == 0
    expected = pq.read_table(whole).to_pylist()
    assert [r["id"] for r in expected] == ["r0", "r1", "r2", "r3"]
    assert pq.read_table(merged).to_pylist() == expected
    # Parquet parts to JSONL: the same rows, in DATA's order.
    as_jsonl = tmp_path / "merged.jsonl"
    assert main(["merge", str(data), *parts, "-o", str(as_jsonl)]) == 0
    assert [json.loads(line) for line in as_jsonl.read_text().splitlines()] == expected

    # A part that is not a parquet file qalc wrote: a clear error, nothing written.
    bogus = tmp_path / "bogus.parquet"
    bogus.write_text("not parquet")
    capsys.readouterr()
    assert main(["merge", str(data), parts[0], str(bogus), "-o", str(tmp_path / "x.parquet")]) == 1
    assert "bogus.parquet: not a parquet file" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()
