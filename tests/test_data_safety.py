"""Data preparation never destroys data and drops nothing silently (fault injection).

1. An output directory that is, contains or lies inside an input is refused before anything is touched.
2. ``--overwrite`` keeps the previous output until the new one is complete (then swaps); a failed build
   leaves it intact and no scratch directory behind.
3. Every image is decoded fully at preparation (a truncated JPEG is an error naming the file); at training
   time a decode error names the sample's source file.
4. Files not read, empty class folders and invalid UTF-8 are warned about (named and counted); ``strict``
   makes each an error raised before any output is written.
"""

import io
import json
import os
import warnings
from pathlib import Path

import pytest

from lit_ortho.data import DataError, ImageDataModule, prepare_images, prepare_text

pytestmark = [
    pytest.mark.usefixtures("cache"),  # a temp LIT_ORTHO_CACHE (tests/conftest.py)
    pytest.mark.filterwarnings("ignore:.*The given buffer is not writable"),
]

FAST = {"num_workers": 1, "verbose": False}


def _snapshot(root: Path) -> dict:
    """Every file (and symlink) under root with its bytes: what must survive a refused or failed run."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def _leftovers(out: Path) -> list:
    """Scratch / aside directories of ``out`` left in its parent."""
    return sorted(p.name for p in Path(out).parent.iterdir() if p.name.startswith(f".{Path(out).name}."))


def _corpus(root: Path, n: int = 12) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text("<|endoftext|>".join(f"plain document {i} " * 5 for i in range(n)))
    with open(root / "b.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"json document {i} " * 4}) + "\n")
    return root


def _image(color, fmt="PNG", size=(16, 12), noise=False) -> bytes:
    import numpy as np
    from PIL import Image

    if noise:  # incompressible pixels: a JPEG large enough that truncating it cuts the scan data
        pixels = np.random.default_rng(sum(color)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(pixels)
    else:
        img = Image.new("RGB", size, color)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _tree(root: Path, classes=("cat", "dog"), n: int = 3, fmt="PNG", suffix=".png") -> Path:
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            color = [0, 0, 0]
            color[k % 3] = 255
            (root / c / f"{i}{suffix}").write_bytes(_image(tuple(color), fmt, (16 + i, 12)))
    return root


def _cli(argv):
    from lit_ortho.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    return str(info.value.code)


# ---- 1. output directory overlapping an input ----------------------------------------------------------
@pytest.mark.parametrize("case", ["same", "parent", "inside", "symlink", "val-inputs"])
def test_prepare_text_refuses_an_output_that_overlaps_an_input(tmp_path, case):
    work = tmp_path / "work"
    corpus = _corpus(work / "corpus")
    (work / "unrelated.txt").write_text("someone else's file")
    other = tmp_path / "other.txt"
    other.write_text("training text " * 50)
    inputs, val_inputs, out = [str(corpus)], None, corpus
    if case == "parent":
        out = work
    elif case == "inside":
        out = corpus / "prepared"
    elif case == "symlink":
        out = work / "link"
        out.symlink_to(corpus, target_is_directory=True)
    elif case == "val-inputs":
        inputs, val_inputs = [str(other)], [str(corpus)]
    before = _snapshot(tmp_path)
    with pytest.raises(DataError) as info:
        prepare_text(inputs, str(out), tokenizer="byte", val_inputs=val_inputs, overwrite=True, **FAST)
    message = str(info.value)
    assert str(out) in message and str(corpus) in message, message
    assert _snapshot(tmp_path) == before  # nothing deleted, nothing written


@pytest.mark.parametrize("case", ["same", "parent", "inside", "symlink"])
def test_prepare_images_refuses_an_output_that_overlaps_the_image_root(tmp_path, case):
    work = tmp_path / "work"
    root = _tree(work / "images")
    (work / "unrelated.txt").write_text("someone else's file")
    out = {"same": root, "parent": work, "inside": root / "prepared", "symlink": work / "link"}[case]
    if case == "symlink":
        out.symlink_to(root, target_is_directory=True)
    before = _snapshot(tmp_path)
    with pytest.raises(DataError) as info:
        prepare_images(str(root), str(out), overwrite=True, **FAST)
    assert str(out) in str(info.value) and str(root) in str(info.value), str(info.value)
    assert _snapshot(tmp_path) == before


def test_the_commands_refuse_to_prepare_over_their_input(tmp_path):
    """The two command lines that deleted the corpus / the image tree."""
    corpus = _corpus(tmp_path / "corpus")
    before = _snapshot(corpus)
    message = _cli(["prepare-text", str(corpus), "--output-dir", str(corpus), "--tokenizer", "byte", "--overwrite"])
    assert message.startswith("lit-ortho prepare-text: error: ") and message.count(str(corpus)) >= 2, message
    assert _snapshot(corpus) == before
    images = _tree(tmp_path / "images")
    before = _snapshot(images)
    message = _cli(["prepare-images", str(images), "--output-dir", str(images), "--overwrite"])
    assert message.startswith("lit-ortho prepare-images: error: ") and message.count(str(images)) >= 2, message
    assert _snapshot(images) == before


def test_overwrite_replaces_only_a_prepared_directory(tmp_path):
    (tmp_path / "c.txt").write_text("hello world " * 40)
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(DataError, match="home' is not a prepared lit-ortho directory"):
        prepare_text([str(tmp_path / "c.txt")], str(home), tokenizer="byte", overwrite=True, **FAST)
    assert (home / "thesis.tex").read_text() == "years of work"


# ---- 2. --overwrite keeps the previous output until the new one is complete ------------------------------
@pytest.mark.parametrize(
    "bad, error",
    [('{"text": "fine"}\n{"text": broken\n', "bad.jsonl:2: not a JSON line"), ('{"text": "fine"}\n{"body": "x"}\n', "bad.jsonl:2: no 'text' field")],
)
def test_failed_text_overwrite_keeps_the_previous_output(tmp_path, bad, error):
    out = tmp_path / "out"
    prepare_text([str(_corpus(tmp_path / "corpus"))], str(out), tokenizer="byte", val_fraction=0, **FAST)
    before = _snapshot(out)
    (tmp_path / "bad.jsonl").write_text(bad)
    with pytest.raises(DataError, match=error) as info:
        prepare_text([str(tmp_path / "bad.jsonl")], str(out), tokenizer="byte", val_fraction=0, overwrite=True, **FAST)
    assert ".tmp-" not in str(info.value)
    assert _snapshot(out) == before and _leftovers(out) == []
    from lit_ortho.data import TextDataModule

    TextDataModule(data_dir=str(out), seq_length=8, batch_size=2).setup("fit")  # still a usable directory


def test_failed_image_overwrite_keeps_the_previous_output(tmp_path):
    out = tmp_path / "out"
    prepare_images(str(_tree(tmp_path / "good")), str(out), val_fraction=0, **FAST)
    before = _snapshot(out)
    bad = _tree(tmp_path / "bad")
    (bad / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        prepare_images(str(bad), str(out), val_fraction=0, overwrite=True, **FAST)
    assert _snapshot(out) == before and _leftovers(out) == []


def test_overwrite_swaps_in_the_new_output_and_cleans_up(tmp_path):
    out = tmp_path / "out"
    first = prepare_text([str(_corpus(tmp_path / "c1", 4))], str(out), tokenizer="byte", val_fraction=0, **FAST)
    second = prepare_text([str(_corpus(tmp_path / "c2", 20))], str(out), tokenizer="byte", val_fraction=0, overwrite=True, **FAST)
    assert second["splits"]["train"]["documents"] == 40 != first["splits"]["train"]["documents"]
    assert json.loads((out / "lit_ortho.json").read_text()) == second
    assert _leftovers(out) == [] and not (out / ".utf8").exists()


def test_a_crash_while_swapping_leaves_the_previous_output(tmp_path, monkeypatch):
    """The rename of the new directory into place fails: the old one is put back, complete."""
    out = tmp_path / "out"
    prepare_text([str(_corpus(tmp_path / "c1"))], str(out), tokenizer="byte", val_fraction=0, **FAST)
    before = _snapshot(out)
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".out.tmp-") and Path(dst) == out:
            raise OSError(28, "No space left on device (injected)")
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="injected"):
        prepare_text([str(_corpus(tmp_path / "c2", 20))], str(out), tokenizer="byte", val_fraction=0, overwrite=True, **FAST)
    monkeypatch.undo()
    assert _snapshot(out) == before and _leftovers(out) == []


def test_errors_name_the_output_directory_not_the_scratch_one(tmp_path):
    from lit_ortho.data import _common

    out = tmp_path / "out"

    def build(scratch):
        (scratch / "train").mkdir()
        raise DataError(f"corrupt data chunk {str(scratch / 'train' / 'chunk-0.bin')!r}")

    with pytest.raises(DataError) as info:
        _common.build_and_replace(out, build)
    assert str(out / "train" / "chunk-0.bin") in str(info.value) and ".tmp-" not in str(info.value)
    assert not out.exists() and _leftovers(out) == []


# ---- 3. images are decoded fully; decode errors name the file ----------------------------------------------
def test_a_truncated_jpeg_is_refused_at_preparation(tmp_path):
    from PIL import Image

    root = _tree(tmp_path / "imgs")
    jpeg = _image((9, 9, 9), "JPEG", (64, 64), noise=True)
    (root / "dog" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    with Image.open(root / "dog" / "cut.jpg") as img:
        img.verify()  # what the old check did: it passes
    with pytest.raises(DataError, match=r"cannot read image .*cut\.jpg.*truncated"):
        prepare_images(str(root), str(tmp_path / "out"), val_fraction=0, **FAST)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path / "out") == []


def test_a_decode_error_in_training_names_the_source_file(tmp_path):
    from lit_ortho.data import ImageStreamingDataset

    root = tmp_path / "imgs"
    _tree(root, n=2, fmt="JPEG", suffix=".jpg")
    prepare_images(str(root), str(tmp_path / "out"), val_fraction=0, **FAST)
    ds = ImageStreamingDataset(str(tmp_path / "out" / "train"), shuffle=False)
    assert sorted(ds[i][1] for i in range(len(ds))) == [0, 0, 1, 1]
    # the source path is stored with every sample
    from litdata import StreamingDataset

    raw = StreamingDataset(str(tmp_path / "out" / "train"), shuffle=False)
    assert sorted(raw[i]["source"] for i in range(len(raw))) == ["cat/0.jpg", "cat/1.jpg", "dog/0.jpg", "dog/1.jpg"]
    # damage one stored image in place (same chunk size, so the chunk checks pass)
    target = (root / "dog" / "1.jpg").read_bytes()
    chunk = next((tmp_path / "out" / "train").glob("*.bin"))
    data = chunk.read_bytes()
    at = data.find(target)
    assert at >= 0
    chunk.write_bytes(data[:at] + b"\0" * 64 + data[at + 64 :])
    ds = ImageStreamingDataset(str(tmp_path / "out" / "train"), shuffle=False)
    with pytest.raises(DataError, match=r"cannot decode image 'dog/1\.jpg'"):
        for i in range(len(ds)):
            ds[i]
    dm = ImageDataModule(data_dir=str(tmp_path / "out"), image_size=16, batch_size=2, num_workers=0)
    dm.setup("fit")
    with pytest.raises(DataError, match=r"dog/1\.jpg"):
        for _ in dm.train_dataloader():
            pass


# ---- 4. nothing is dropped silently; strict refuses ----------------------------------------------------------
def _no_output(out: Path) -> bool:
    return not Path(out).exists() and _leftovers(out) == []


def test_an_empty_class_folder_is_reported(tmp_path):
    root = _tree(tmp_path / "imgs", classes=("cat", "dog", "emu"))
    for p in (root / "emu").iterdir():
        p.unlink()
    with pytest.warns(UserWarning, match=r"1 class folder.* no images.*'emu'"):
        meta = prepare_images(str(root), str(tmp_path / "out"), val_fraction=0, **FAST)
    assert meta["classes"] == ["cat", "dog"]
    with pytest.raises(DataError, match=r"'emu'"):
        prepare_images(str(root), str(tmp_path / "strict"), val_fraction=0, strict=True, **FAST)
    assert _no_output(tmp_path / "strict")


def test_image_files_that_are_not_read_are_reported(tmp_path):
    root = _tree(tmp_path / "imgs")
    (root / "cat" / "x.jfif").write_bytes(_image((1, 2, 3), "JPEG"))
    (root / "dog" / "y.heic").write_bytes(b"not decodable here")
    (root / "stray.png").write_bytes(_image((1, 2, 3)))  # outside any class folder
    with pytest.warns(UserWarning, match=r"3 file\(s\).*not read.*'cat/x\.jfif'.*'dog/y\.heic'.*'stray\.png'"):
        meta = prepare_images(str(root), str(tmp_path / "out"), val_fraction=0, **FAST)
    assert meta["splits"]["train"]["images"] == 6
    with pytest.raises(DataError, match=r"3 file\(s\).*x\.jfif"):
        prepare_images(str(root), str(tmp_path / "strict"), val_fraction=0, strict=True, **FAST)
    assert _no_output(tmp_path / "strict")


def test_text_files_that_are_not_read_are_reported(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    (corpus / "table.csv").write_text("a,b\n1,2\n")
    (corpus / "sub").mkdir()
    (corpus / "sub" / "notes.docx").write_bytes(b"PK\x03\x04")
    with pytest.warns(UserWarning, match=r"2 file\(s\).*not read.*notes\.docx.*table\.csv"):
        prepare_text([str(corpus)], str(tmp_path / "out"), tokenizer="byte", val_fraction=0, **FAST)
    with pytest.raises(DataError, match=r"2 file\(s\).*table\.csv"):
        prepare_text([str(corpus)], str(tmp_path / "strict"), tokenizer="byte", val_fraction=0, strict=True, **FAST)
    assert _no_output(tmp_path / "strict")


def test_invalid_utf8_is_reported(tmp_path):
    import numpy as np

    corpus = _corpus(tmp_path / "corpus")
    (corpus / "noise.txt").write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with open(corpus / "c.jsonl", "wb") as f:
        f.write(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')  # Latin-1, not UTF-8
    with pytest.warns(UserWarning, match=r"2 input file\(s\).*invalid UTF-8.*c\.jsonl' \(1 byte.*noise\.txt' \(\d[\d,]* bytes"):
        meta = prepare_text([str(corpus)], str(tmp_path / "out"), tokenizer="byte", val_fraction=0, num_workers=2, verbose=False)
    assert meta["splits"]["train"]["documents"] == 12 + 12 + 1 + 2
    with pytest.raises(DataError, match=r"(noise\.txt|c\.jsonl).*invalid UTF-8"):
        prepare_text([str(corpus)], str(tmp_path / "strict"), tokenizer="byte", val_fraction=0, strict=True, **FAST)
    assert _no_output(tmp_path / "strict")


def test_clean_input_prepares_without_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        prepare_text([str(_corpus(tmp_path / "corpus"))], str(tmp_path / "t"), tokenizer="byte", val_fraction=0, strict=True, **FAST)
        prepare_images(str(_tree(tmp_path / "imgs")), str(tmp_path / "i"), val_fraction=0, strict=True, **FAST)


def test_the_commands_warn_and_refuse_with_strict(tmp_path, capsys):
    from lit_ortho.cli import main

    corpus = _corpus(tmp_path / "corpus")
    (corpus / "table.csv").write_text("a,b\n")
    main(["prepare-text", str(corpus), "--output-dir", str(tmp_path / "t"), "--tokenizer", "byte", "--val-fraction", "0", "--num-workers", "1"])
    err = capsys.readouterr().err
    assert "lit-ortho prepare-text: warning: 1 file(s)" in err and "table.csv" in err
    message = _cli(["prepare-text", str(corpus), "--output-dir", str(tmp_path / "t2"), "--tokenizer", "byte", "--strict"])
    assert message.startswith("lit-ortho prepare-text: error: 1 file(s)") and "table.csv" in message
    assert _no_output(tmp_path / "t2")

    root = _tree(tmp_path / "imgs", classes=("a", "b", "c"))
    for p in (root / "c").iterdir():
        p.unlink()
    main(["prepare-images", str(root), "--output-dir", str(tmp_path / "i"), "--val-fraction", "0", "--num-workers", "1"])
    err = capsys.readouterr().err
    assert "lit-ortho prepare-images: warning: 1 class folder" in err and "'c'" in err
    message = _cli(["prepare-images", str(root), "--output-dir", str(tmp_path / "i2"), "--strict"])
    assert message.startswith("lit-ortho prepare-images: error: 1 class folder") and "'c'" in message
    assert _no_output(tmp_path / "i2")
