"""Expert distillation for the apprentice: per-subject LoRA experts, CLIP filter, shards, Ray fan-out."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from personify.errors import ConfigError, PersonifyError
from personify.evaluation.encoders import tiny_clip
from personify.incontext.data import Cluster, ExpertTriples
from personify.incontext.experts import ExpertsConfig, clip_scores, make_shard, select_top, shard_path, with_identifier


def _clusters(n: int, k: int = 2, size: int = 32) -> list[Cluster]:
    """n tiny subjects: a coloured square on noise, K demos each, in backgrounds b, b+1 (target b+2)."""
    rng = np.random.default_rng(0)
    out = []
    for s in range(n):
        imgs = rng.integers(0, 255, (k + 1, size, size, 3), dtype=np.uint8)
        imgs[:, 8:24, 8:24] = rng.integers(0, 255, 3, dtype=np.uint8)
        caps = [f"a photo of a dog number {s} in scene {j}" for j in range(k + 1)]
        out.append(Cluster(imgs[:k], caps[:k], imgs[k], caps[k], 100 + s, "dog", list(range(s, s + k + 1))))
    return out


def _cfg(out: Path, **kw) -> ExpertsConfig:
    base = dict(model="tiny", out=str(out), n_demos=2, lora_steps=2, prior_weight=0.0, n_prompts=2, images_per_prompt=2, steps=2, clip="tiny",
                keep_fraction=0.5)
    return ExpertsConfig(**{**base, **kw})


def test_select_top_keeps_best_fraction_by_score():
    score = np.random.default_rng(0).normal(size=40)
    kept = select_top(score, 0.25)
    assert len(kept) == 10 and list(kept) == list(np.argsort(-score)[:10])  # best first
    assert score[kept].min() > np.delete(score, kept).max()
    assert len(select_top(score[:3], 0.1)) == 1  # at least one
    passed = score < np.sort(score)[-3]  # the 3 best fail an absolute gate: the next 10 are kept instead
    kept = select_top(score, 0.25, passed)
    assert len(kept) == 10 and passed[kept].all() and score[kept].min() > score[passed & ~np.isin(np.arange(40), kept)].max()
    assert len(select_top(score, 0.25, np.zeros(40, bool))) == 0


def test_config_validates_and_identifier_goes_before_class_word():
    for bad in (dict(keep_fraction=0), dict(keep_fraction=1.5), dict(n_prompts=30), dict(max_attempts=0), dict(n_demos=1), dict(num_gpus=-1)):
        with pytest.raises(ConfigError):
            ExpertsConfig(**bad)
    assert with_identifier("a photo of a dog on the beach", "dog") == "a photo of a [V] dog on the beach"
    assert with_identifier("hotdog, dog", "dog") == "hotdog, [V] dog"
    assert with_identifier("a cat", "dog") == "a cat"  # no match: the Trainer falls back to the instance prompt


def test_cli_builds_the_config(tmp_path, monkeypatch, capsys):
    from personify import cli

    got = []
    monkeypatch.setattr("personify.incontext.fanout.run_experts", lambda cfg: got.append(cfg))
    (tmp_path / "c.yaml").write_text("incontext_experts:\n  lora_options: {rank: 8}\n  keep_fraction: 0.3\n")
    argv = ["incontext", "experts", "--config", str(tmp_path / "c.yaml"), "--model", "tiny", "--out", str(tmp_path), "--num-gpus", "0.125",
            "--keep-fraction", "0.2", "--ray-address", "auto"]
    assert cli.main(argv) == 0 and "incontext experts: wrote" in capsys.readouterr().out
    assert isinstance(got[0], ExpertsConfig) and (got[0].num_gpus, got[0].keep_fraction, got[0].ray_address) == (0.125, 0.2, "auto")
    assert got[0].lora_options == {"rank": 8}  # config-file only
    assert cli.main(["incontext", "experts", "--keep-fraction", "0"]) == 2  # validation error -> one line, exit 2


def test_make_shard_writes_filtered_triples_atomically(tmp_path):
    c = _clusters(1)[0]
    cfg = _cfg(tmp_path, keep_work=True, images_per_prompt=4, keep_fraction=0.25)
    info = make_shard(c, "dog0", cfg)
    path = shard_path(tmp_path, "dog0", 0)
    assert path.name == "dog0_seed0.npz" and info["generated"] == 8 and info["kept"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left
    with np.load(path) as z:
        assert np.array_equal(z["demo_images"], c.demo_images) and list(z["demo_captions"]) == c.demo_captions
        assert z["images"].shape == (2, 32, 32, 3) and z["images"].dtype == np.uint8
        score = z["clip_i"] + z["clip_t"]
        assert list(z["kept"]) == list(np.argsort(-score)[:2])  # the top 25 % of all 8 by CLIP-I + CLIP-T
        meta = json.loads(str(z["meta"]))
        # prompts: new world contexts (not the demos' backgrounds 0, 1), without the identifier
        from personify.world.backgrounds import BACKGROUNDS

        assert all(b not in (0, 1) for b in z["backgrounds"])
        assert [str(p) for p in z["prompts"]] == [f"a dog {BACKGROUNDS[b].phrase}" for b in z["backgrounds"]]
        assert meta["identifier"] not in " ".join(z["generated_prompts"]) and meta["word"] == "dog" and meta["sprite"] == 100
        # stored scores are CLIP's: rescoring the kept images gives the same numbers
        ci, ct = clip_scores(tiny_clip(), z["images"], c.demo_images, [str(p) for p in z["prompts"]])
        assert np.allclose(ci, z["clip_i"][z["kept"]], atol=1e-5) and np.allclose(ct, z["clip_t"][z["kept"]], atol=1e-5)
    # the expert is a real LoRA concept trained on the demos, captioned with its identifier
    from personify.artifact import read_concept

    _, cmeta = read_concept(tmp_path / "work" / "dog0_seed0" / "lora" / "concept.safetensors")
    assert cmeta["method"] == "lora" and cmeta["metrics"]["steps"] == 2
    assert (tmp_path / "work" / "dog0_seed0" / "demos" / "00.txt").read_text() == "a photo of a [V] dog number 0 in scene 0"
    mtime = path.stat().st_mtime_ns
    assert make_shard(c, "dog0", cfg)["skipped"] and path.stat().st_mtime_ns == mtime  # idempotent


def test_expert_triples_as_clusters(tmp_path):
    c = _clusters(1)[0]
    make_shard(c, "dog0", _cfg(tmp_path))
    tri = ExpertTriples(tmp_path, n_demos=2)
    assert len(tri) == 2 and tri.names == ["dog0_seed0.npz"]
    t = tri[1]
    with np.load(tmp_path / "dog0_seed0.npz") as z:
        assert np.array_equal(t.target_image, z["images"][1]) and t.target_caption == z["prompts"][1]
    assert np.array_equal(t.demo_images, c.demo_images) and t.word == "dog" and t.sprite == 100
    with pytest.raises(PersonifyError, match="fewer than n_demos"):
        ExpertTriples(tmp_path, n_demos=3)
    with pytest.raises(PersonifyError, match="missing"):
        ExpertTriples(tmp_path, n_demos=2, names=["gone_seed0.npz"])


def test_apprentice_mixes_expert_triples_and_resumes_deterministically(tmp_path, monkeypatch):
    import personify.incontext.train as tr
    from personify.incontext.train import ApprenticeTrainConfig

    gt = _clusters(3, size=64)  # world-sized renders; the tiny model's 32 px expert images are resized to match
    shards = tmp_path / "experts"
    for s, c in enumerate(_clusters(2)):
        make_shard(c, f"e{s}", _cfg(shards))
    expert_prompts = {str(p) for f in shards.glob("*.npz") for p in np.load(f)["prompts"]}
    seen: list[list[str]] = []  # target captions of every batch, in order
    real = tr.make_batch
    monkeypatch.setattr(tr, "make_batch", lambda pipe, rows: seen.append([r.target_caption for r in rows]) or real(pipe, rows))

    def run(out, steps, **kw):
        cfg = ApprenticeTrainConfig(model="tiny", out=str(tmp_path / out), steps=steps, batch_size=4, n_demos=2, save_every=1, device="cpu", **kw)
        n0 = len(seen)
        tr.main(cfg, clusters=gt)
        return seen[n0:]

    plain = run("plain", 3)
    mixed = run("mixed", 3, experts=str(shards), expert_ratio=0.5)
    rows = [c for b in mixed for c in b]
    assert 0 < sum(c in expert_prompts for c in rows) < len(rows)  # both sources in the batches
    for b0, b1 in zip(plain, mixed):  # ground-truth rows are the ones the run without experts drew: old runs replay
        assert all(c1 in expert_prompts or c1 == c0 for c0, c1 in zip(b0, b1))
    assert run("none", 3, experts=str(shards), expert_ratio=0.0) == plain
    # resume: stop after 2 steps, add a shard, continue: the same batches as the uninterrupted run
    run("resumed", 2, experts=str(shards), expert_ratio=0.5)
    make_shard(_clusters(3)[2], "e2", _cfg(shards))
    assert run("resumed", 3, experts=str(shards), expert_ratio=0.5) == mixed[2:]
    assert json.loads((tmp_path / "resumed" / "expert_shards.json").read_text()) == ["e0_seed0.npz", "e1_seed0.npz"]


# --- Ray ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    """One local Ray cluster for the module (start-up ~6 s); only these tests need Ray installed."""
    ray = pytest.importorskip("ray", reason="expert fan-out needs Ray (pip install 'personify[ray]')")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _flaky(calls: Path, fail: dict[str, int], fake: bool = False, die: bool = False):
    """make_shard that logs each execution and fails the first `fail[subject]` tries of a subject:
    raises, or with `die` kills its worker process. `fake`: write a stub shard instead of training.
    A closure, so Ray pickles it by value (the tests folder is not importable in workers)."""
    import os

    from personify.incontext.experts import make_shard as real, write_shard

    def work(cluster, subject, cfg):
        with open(calls, "a") as f:
            f.write(subject + "\n")
        if calls.read_text().split().count(subject) <= fail.get(subject, 0):
            if die:
                os._exit(1)
            raise RuntimeError(f"injected failure of {subject}")
        if fake:
            write_shard(shard_path(cfg.out, subject, cfg.seed), {"demo_images": cluster.demo_images})
            return {"subject": subject}
        return real(cluster, subject, cfg)

    return work


def test_ray_fanout_retries_failures_and_reruns_only_missing_shards(tmp_path, local_ray):
    from personify.incontext.fanout import run_experts

    clusters, names = _clusters(3), ["a", "b", "c"]
    out, calls = tmp_path / "shards", tmp_path / "calls.txt"
    cfg = _cfg(out, num_cpus=1, max_attempts=2)
    summary = run_experts(cfg, clusters, names, work=_flaky(calls, {"b": 1}))
    assert sorted(summary["written"]) == names and summary["attempts"] == {"a": 1, "b": 2, "c": 1}
    assert sorted(calls.read_text().split()) == ["a", "b", "b", "c"]  # b failed once, was resubmitted and finished
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    assert sorted(mtimes) == ["a_seed0.npz", "b_seed0.npz", "c_seed0.npz"]
    for n in names:  # each shard holds its own subject's demos
        with np.load(shard_path(out, n, 0)) as z:
            assert np.array_equal(z["demo_images"], clusters[names.index(n)].demo_images)

    # a rerun after "a" was lost trains only "a"; the other shards are not touched
    shard_path(out, "a", 0).unlink()
    calls.write_text("")
    summary = run_experts(cfg, clusters, names, work=_flaky(calls, {}))
    assert calls.read_text().split() == ["a"] and summary["skipped"] == 2 and summary["written"] == ["a"]
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in mtimes.items() if n != "a_seed0.npz")

    # a subject failing every try: the others finish, the run reports it, a rerun retries only it
    calls.write_text("")
    cfg3 = _cfg(tmp_path / "s3", max_attempts=2)
    with pytest.raises(PersonifyError, match="rerun the same command"):
        run_experts(cfg3, clusters, names, work=_flaky(calls, {"c": 5}, fake=True))
    assert sorted(calls.read_text().split()) == ["a", "b", "c", "c"]
    assert json.loads((tmp_path / "s3" / "experts.json").read_text())["failed"].keys() == {"c"}
    calls.write_text("")
    run_experts(cfg3, clusters, names, work=_flaky(calls, {}, fake=True))
    assert calls.read_text().split() == ["c"] and shard_path(tmp_path / "s3", "c", 0).is_file()


def test_ray_fanout_survives_a_dying_worker(tmp_path, local_ray):
    from personify.incontext.fanout import run_experts

    calls = tmp_path / "calls.txt"
    summary = run_experts(_cfg(tmp_path / "o", max_attempts=2), _clusters(2), ["a", "b"], work=_flaky(calls, {"a": 1}, fake=True, die=True))
    assert summary["attempts"] == {"a": 2, "b": 1} and sorted(summary["written"]) == ["a", "b"]
    log = [json.loads(line) for line in (tmp_path / "o" / "experts.jsonl").read_text().splitlines()]
    assert [e["subject"] for e in log if "worker died" in e.get("error", "")] == ["a"]
