"""Training dashboards (tsloss_harness/monitor.py): a tiny run with ``--tensorboard`` and a ds_config
``csv_monitor`` block; the scalars read back with TensorBoard's own reader, and the CSV files, equal
metrics.jsonl."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import REPO

from tsloss_harness.monitor import MonitorError, split_monitor_blocks
from tsloss_harness.tune import TuneConfig, run


@pytest.mark.slow
def test_tensorboard_and_csv_scalars_equal_metrics_jsonl(tmp_path, tiny_llama_dir, short_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ds = json.loads((REPO / "ds_configs" / "z2.json").read_text())
    ds["csv_monitor"] = {"enabled": True, "output_path": str(tmp_path / "csv")}
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    out = tmp_path / "run-a"
    run(
        TuneConfig(
            model=str(tiny_llama_dir),
            data_dir=str(short_dir),
            num_samples=2,
            batch_size=2,
            max_steps=4,
            lr=0.01,
            eval_every=2,
            topology_every=2,
            progress=False,
            output_dir=str(out),
            ds_config=str(tmp_path / "ds.json"),
            tensorboard=str(tmp_path / "tb"),
        )
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = {key: [(r["step"], r[key]) for r in records if key in r] for r in records for key in r if key != "step"}
    assert {
        "loss",
        "ce",
        "reg",
        "lr",
        "samples_per_s",
        "accuracy",
        "h0_count",
        "persistence_entropy",
    } <= expected.keys()

    events = EventAccumulator(str(tmp_path / "tb" / "run-a"))  # DIR/<run name>
    events.Reload()
    assert set(events.Tags()["scalars"]) == expected.keys()  # ours only: the engine's Train/Samples/* stay out
    for key, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in points], key
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), key  # stored as float32

    csv_dir = tmp_path / "csv" / "run-a"  # no job_name in the block: the run's name
    assert {p.stem for p in csv_dir.glob("*.csv")} == expected.keys()
    for key, points in expected.items():
        with (csv_dir / f"{key}.csv").open() as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["step", key]
        assert [(int(s), float(v)) for s, v in rows[1:]] == points, key


def test_a_monitor_whose_package_is_missing_fails_in_one_line(tmp_path):
    config = TuneConfig(model="m", output_dir=str(tmp_path / "run"))
    ds = {"train_batch_size": 8, "comet": {"enabled": True}}  # comet_ml is not a dependency of the project
    with pytest.raises(MonitorError, match=r"comet.enabled: the comet monitor needs `pip install comet_ml`"):
        split_monitor_blocks(ds, config)
    engine_config, blocks = split_monitor_blocks({**ds, "comet": {"enabled": False}}, config)
    assert engine_config == {"train_batch_size": 8} and blocks == {}
