"""Few-step smoke tests of the command line, in process, and of the installed entry point."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from personify.cli import main


def test_generate_writes_images_sidecars_and_sheet(tmp_path):
    out = tmp_path / "g"
    assert main(["generate", "a photo of a dog", "--model", "tiny", "--n", "3", "--steps", "2", "--seed", "5", "--out", str(out)]) == 0
    pngs = sorted(p for p in out.glob("*.png") if p.name != "contact_sheet.png")
    assert len(pngs) == 3 and (out / "contact_sheet.png").is_file()
    side = json.loads(pngs[1].with_suffix(".json").read_text())
    assert side["seed"] == 6 and side["prompt"] == "a photo of a dog" and side["sampler"] == "ddim" and side["model_hash"]
    # A seed alone reproduces an image, whatever the batch.
    assert main(["generate", "a photo of a dog", "--model", "tiny", "--n", "1", "--steps", "2", "--seed", "6", "--out", str(tmp_path / "h")]) == 0
    again = next((tmp_path / "h").glob("*000006.png"))
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(pngs[1])))


def test_generate_with_a_swapped_in_vae(tmp_path):
    """`--vae DIR` decodes with another AutoencoderKL (here: the tiny model's with a changed decoder):
    other pixels, same base-model hash (concepts stay valid); a folder that is not a VAE is one line."""
    import torch

    from personify.models import load_pipeline

    pipe = load_pipeline("tiny")
    with torch.no_grad():
        pipe.vae.decoder.conv_out.bias.add_(0.5)
    pipe.vae.save_pretrained(tmp_path / "vae")
    args = ["generate", "a photo of a dog", "--model", "tiny", "--n", "1", "--steps", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "b")]) == 0
    a, b = (next((tmp_path / d).glob("*000000.png")) for d in "ab")
    assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    ha, hb = (json.loads(p.with_suffix(".json").read_text())["model_hash"] for p in (a, b))
    assert ha == hb
    fa, fb = (json.loads(p.with_suffix(".json").read_text())["full_model_hash"] for p in (a, b))
    assert fa != fb  # the sidecar still says which decoder drew it
    assert main([*args, "--vae", str(tmp_path), "--out", str(tmp_path / "c")]) == 2  # no config.json there


def test_train_from_yaml_and_toml_config(subject_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("personify.data.class_images.CLASS_STEPS", 2)
    y = tmp_path / "c.yaml"
    y.write_text(f"train:\n  images: {subject_dir}\n  model: tiny\n  resolution: 32\n  progress: false\n"
                 f"method:\n  class_word: dog\n  steps: 3\n  num_class_images: 1\n")
    # CLI flags override the file.
    assert main(["train", "--method", "dreambooth", "--config", str(y), "--out", str(tmp_path / "a"), "--steps", "2"]) == 0
    from personify.artifact import read_concept

    meta = read_concept(tmp_path / "a" / "concept.safetensors")[1]
    assert meta["metrics"]["steps"] == 2 and meta["config"]["method"]["num_class_images"] == 1
    t = tmp_path / "c.toml"
    t.write_text(f'[train]\nimages = "{subject_dir}"\nmodel = "tiny"\nresolution = 32\nprogress = false\n'
                 f'[method]\nclass_word = "cat"\nsteps = 1\nprior_weight = 0.0\n')
    assert main(["train", "--method", "dreambooth", "--config", str(t), "--out", str(tmp_path / "b")]) == 0
    assert read_concept(tmp_path / "b" / "concept.safetensors")[1]["class_word"] == "cat"


def test_generate_with_concept_and_wrong_base(subject_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("personify.data.class_images.CLASS_STEPS", 2)
    assert main(["train", "--method", "dreambooth", "--images", str(subject_dir), "--model", "tiny", "--class-word", "dog",
                 "--steps", "1", "--prior-weight", "0", "--resolution", "32", "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    art = str(tmp_path / "r" / "concept.safetensors")
    assert main(["generate", "a rcn dog", "--model", "tiny", "--concept", art, "--n", "1", "--steps", "2", "--out", str(tmp_path / "g")]) == 0
    side = json.loads(next((tmp_path / "g").glob("*.json")).read_text())
    assert side["concepts"][0]["method"] == "dreambooth"
    capsys.readouterr()
    assert main(["generate", "a rcn dog", "--model", "tiny:1", "--concept", art, "--out", str(tmp_path / "g2")]) == 2
    assert "pass --model tiny" in capsys.readouterr().err


def test_entry_point_offline(tmp_path):
    """The installed `personify` command generates with networking disabled by proxy settings."""
    env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    r = subprocess.run([sys.executable, "-m", "personify.cli", "generate", "a cat", "--model", "tiny", "--n", "1", "--steps", "1",
                        "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "contact_sheet.png").is_file()


def test_simple_commands_print_paths_not_result_objects(monkeypatch, tmp_path, capsys):
    """`personify seedselect` used to print the whole SeedSelectResult (every latent) after its own summary."""
    import personify.cli as C

    class Result:  # what seedselect.main returns: an object, not a path
        def __repr__(self):
            return "Result(" + "x" * 5000 + ")"

    real_import = C._import
    for returned, shown in ((Result(), False), (tmp_path / "out.png", True)):
        fake = lambda cfg, r=returned: r  # noqa: E731  (the command function; its config is still parsed for real)
        monkeypatch.setattr(C, "_import", lambda path, f=fake: f if path.endswith(":main") and "seedselect" in path else real_import(path))
        assert C.main(["seedselect", "--images", str(tmp_path), "--prompt", "a photo of a dog"]) == 0
        out = capsys.readouterr().out
        assert ("seedselect: wrote" in out) is shown and "xxxx" not in out


def test_help_shows_each_methods_own_defaults(capsys):
    """Flags' argparse defaults are suppressed (config-file layering), so --help states the dataclass
    defaults itself — each method's own (LoRA's learning rate is not DreamBooth's)."""
    from personify.methods import get_method

    for method in ("dreambooth", "lora"):
        try:
            main(["train", "--method", method, "--help"])
        except SystemExit:
            pass
        text = " ".join(capsys.readouterr().out.split())
        lr = get_method(method).Config.learning_rate
        assert f"(default: {lr:g})" in text, method
        assert "(default: False)" in text  # booleans too (e.g. --train-text-encoder)
