"""Training reads webdataset-style tar shards as well as JSONL manifests, and resumes exactly."""

from tests.integration.test_train_resume import assert_same_run, config
from vlmkit.data.synth import SynthConfig, write_dataset
from vlmkit.training.recipes import run
from vlmkit.training.collate import manifest_texts


def test_finetune_on_tar_shards_kill_and_resume(tmp_path, capsys):
    shards = write_dataset(tmp_path / "shards", 10, SynthConfig(seed=3), shards=True, shard_size=6)
    assert len(list(shards.glob("*.tar"))) >= 2
    assert any(t.startswith("detect") or t.startswith("answer") for t in manifest_texts(shards))
    data = {"data.manifest": str(shards)}
    full = run(config(tmp_path / "full", **data))
    assert "streamed tar shards" in capsys.readouterr().out
    first = run(config(tmp_path / "split", stop_after="3", **data))
    assert first.step == 3
    second = run(config(tmp_path / "split", **data), resume=True)
    assert_same_run(tmp_path / "full", full.losses, tmp_path / "split", second.losses)
