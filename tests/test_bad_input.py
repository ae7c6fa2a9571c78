"""Every bad input gets one line naming the file and the fix, through the CLI, without a traceback."""
from __future__ import annotations

import errno
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from personify.cli import main
from personify.data.images import load_rgb
from personify.data.dataset import SubjectImages
from personify.errors import PersonifyError

from conftest import make_subject


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def train_args(images, out, *extra):
    return ["train", "--method", "dreambooth", "--images", str(images), "--model", "tiny", "--class-word", "dog",
            "--steps", "1", "--num-class-images", "1", "--resolution", "32", "--out", str(out), "--no-progress", *extra]


def assert_one_line(err: str, *needles: str) -> None:
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, *train_args(tmp_path / "empty", tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "empty", "no images found", "add 3-5 photos")


def test_missing_folder(tmp_path, capsys):
    code, err = run_cli(capsys, *train_args(tmp_path / "nope", tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "nope", "not found")


def test_non_image_files_are_skipped_with_a_warning(tmp_path):
    d = make_subject(tmp_path / "s", n=2)
    (d / "notes.docx").write_bytes(b"PK\x03\x04")
    (d / "00.txt").write_text("a photo of [V] on a table")  # a caption sidecar: quiet
    with pytest.warns(UserWarning, match="notes.docx"):
        ds = SubjectImages(d, 32)
    assert len(ds) == 2 and ds.items[0].caption == "a photo of [V] on a table"


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_corrupt_image_names_the_file(tmp_path, capsys, kind):
    d = make_subject(tmp_path / "s", n=2)
    if kind == "truncated":
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
        (d / "bad.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    else:
        (d / "bad.jpg").write_bytes(b"this is not a jpeg")
    code, err = run_cli(capsys, *train_args(d, tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "bad.jpg", "remove it")


def test_tiny_image_is_an_error(tmp_path, capsys):
    d = make_subject(tmp_path / "s", n=2)
    Image.new("RGB", (4, 4), "red").save(d / "tiny.png")
    code, err = run_cli(capsys, *train_args(d, tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "tiny.png", "4x4", "larger photo")


def test_small_image_is_upscaled_with_a_warning(tmp_path):
    d = make_subject(tmp_path / "s", n=2, size=20)
    with pytest.warns(UserWarning, match="upscaled"):
        SubjectImages(d, 32)


def test_odd_modes_become_sensible_rgb(tmp_path):
    # 16-bit grey at mid level must stay mid-grey (PIL's convert would clip it to white).
    Image.fromarray(np.full((40, 40), 32768, np.uint16)).save(tmp_path / "g16.png")
    assert abs(int(np.asarray(load_rgb(tmp_path / "g16.png"))[0, 0, 0]) - 128) <= 1
    # Transparent pixels composite on white, not black.
    rgba = np.zeros((40, 40, 4), np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.asarray(load_rgb(tmp_path / "a.png"))[0, 0].tolist() == [255, 255, 255]
    # CMYK and palette.
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    r, g, b = np.asarray(load_rgb(tmp_path / "c.jpg"))[5, 5].tolist()
    assert r > 200 and g < 60 and b < 60
    Image.new("P", (40, 40)).save(tmp_path / "p.png")
    assert load_rgb(tmp_path / "p.png").mode == "RGB"


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 30), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° CW on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(tmp_path / "r.jpg").size == (30, 60)


def test_huge_jpeg_decodes_reduced(tmp_path):
    Image.new("RGB", (4000, 3000), "green").save(tmp_path / "big.jpg", quality=50)
    img = load_rgb(tmp_path / "big.jpg", target=64)
    assert max(img.size) <= 1000 and img.mode == "RGB"


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("RGB", (300, 300)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(PersonifyError, match="bomb.png.*megapixels"):
        load_rgb(tmp_path / "bomb.png")


def test_500_images_work(tmp_path):
    d = make_subject(tmp_path / "many", n=500, size=16)
    with pytest.warns(UserWarning, match="500 images"):
        assert len(SubjectImages(d, 16)) == 500


def test_one_image_works_with_a_warning(tmp_path):
    d = make_subject(tmp_path / "one", n=1)
    with pytest.warns(UserWarning, match="only 1 image"):
        assert len(SubjectImages(d, 32)) == 1


def test_dreambooth_without_class_word(subject_dir, tmp_path, capsys):
    args = [a for a in train_args(subject_dir, tmp_path / "o") if a not in ("--class-word", "dog")]
    code, err = run_cli(capsys, *args)
    assert code == 2
    assert_one_line(err, "--class-word", "e.g.")


def test_common_word_identifier_warns(tiny_pipe):
    from personify.tokens import check_identifier

    with pytest.warns(UserWarning, match="common word"):
        check_identifier(tiny_pipe.tokenizer, "dog")


def test_unreadable_model_folder(tmp_path, capsys, tiny_pipe):
    tiny_pipe.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    code, err = run_cli(capsys, "generate", "x", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "g"))
    assert code == 2
    assert_one_line(err, "missing unet/diffusion_pytorch_model.safetensors")
    (tmp_path / "m" / "model_index.json").write_text("{broken")
    code, err = run_cli(capsys, "generate", "x", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "g"))
    assert_one_line(err, "model_index.json", "unreadable")


def test_out_folder_with_checkpoints_needs_resume(subject_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("personify.data.class_images.CLASS_STEPS", 2)
    assert run_cli(capsys, *train_args(subject_dir, tmp_path / "o"))[0] == 0
    code, err = run_cli(capsys, *train_args(subject_dir, tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "--resume")


def test_disk_full_keeps_previous_checkpoint(subject_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("personify.data.class_images.CLASS_STEPS", 2)
    import personify.training.checkpoint as ck

    real_save, calls = ck.torch.save, []

    def flaky_save(obj, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint hits a full disk half way
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(ck.torch, "save", flaky_save)
    code, err = run_cli(capsys, *train_args(subject_dir, tmp_path / "o", "--steps", "4", "--checkpoint-every", "2"))
    assert code == 2
    assert_one_line(err, "No space left on device", "step-000002 is intact", "--resume")
    kept = ck.list_checkpoints(tmp_path / "o")
    assert [s for s, _ in kept] == [2]
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "o" / "checkpoints").iterdir())
    ck.load_checkpoint(kept[0][1])  # still loadable
    monkeypatch.setattr(ck.torch, "save", real_save)
    assert run_cli(capsys, *train_args(subject_dir, tmp_path / "o", "--steps", "4", "--checkpoint-every", "2", "--resume"))[0] == 0
    assert json.loads((tmp_path / "o" / "checkpoints" / "step-000004" / "state.json").read_text())["step"] == 4


def test_bad_config_values(capsys, tmp_path):
    code, err = run_cli(capsys, "generate", "x", "--model", "tiny", "--n", "0", "--out", str(tmp_path))
    assert code == 2
    assert_one_line(err, "n must be")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("generate:\n  stepz: 3\n")
    code, err = run_cli(capsys, "generate", "x", "--config", str(cfg))
    assert_one_line(err, "c.yaml", "unknown option 'stepz'")
    cfg.write_text("generate: [unclosed\n")
    code, err = run_cli(capsys, "generate", "x", "--config", str(cfg))
    assert_one_line(err, "c.yaml", "cannot parse")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    """artifact.atomic_write (artifacts, apprentice checkpoints, expert shards, mini checkpoints): a
    writer that dies half-way (a full disk) leaves the previous file and no temp file behind."""
    import errno

    from personify.artifact import atomic_write
    from personify.errors import PersonifyError

    target = tmp_path / "shard.npz"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"old"))

    def dies_half_way(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(PersonifyError, match="shard.npz: could not write .*No space left.*free disk space"):
        atomic_write(target, dies_half_way)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["shard.npz"]
