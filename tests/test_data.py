"""Data: tokenizers, prepare-text / prepare-images, the data modules, their errors and resumable loading."""

import gzip
import io
import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_ortho.data import (
    ByteTokenizer,
    DataError,
    DataWarning,
    ImageDataModule,
    TextDataModule,
    get_tokenizer,
    prepare_builtin_images,
    prepare_images,
    prepare_text,
)
from lit_ortho.data.text import in_validation


pytestmark = [
    pytest.mark.usefixtures("cache"),  # a temp LIT_ORTHO_CACHE (tests/conftest.py)
    # litdata adds this filter when imported; pytest drops filters added at collection (lit_ortho.data imports litdata)
    pytest.mark.filterwarnings("ignore:.*The given buffer is not writable"),
]


def _token_stream(directory):
    """Every token of a prepared split, in storage order (TokensLoader with 1-token windows)."""
    from litdata import StreamingDataset, TokensLoader

    ds = StreamingDataset(str(directory), item_loader=TokensLoader(block_size=1), shuffle=False)
    return [int(ds[i][0]) for i in range(len(ds))]


def _documents(stream, eot):
    docs, cur = [], []
    for t in stream:
        if t == eot:
            docs.append(tuple(cur))
            cur = []
        else:
            cur.append(t)
    assert not cur, "every document ends with the end-of-text token"
    return Counter(docs)


# ---- tokenizers ---------------------------------------------------------------------------------------
def test_byte_tokenizer_round_trips_unicode_and_end_of_text():
    tok = ByteTokenizer()
    text = "Grüße, 世界! <tag>"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and max(ids) < 256
    assert tok.decode(ids + [tok.eot_id] + tok.encode("x")) == text + "<|endoftext|>x"
    with pytest.raises(ValueError, match="outside the byte tokenizer"):
        tok.decode([300])


def test_tokenizer_errors_name_the_choices():
    with pytest.raises(ValueError, match="unknown tokenizer 'bpe'; valid choices: gpt2, byte"):
        get_tokenizer("bpe")
    try:
        tok = get_tokenizer("gpt2")
    except ValueError as err:  # offline without tiktoken's cached files: a clear message
        assert "tiktoken could not load the 'gpt2' encoding" in str(err) and "byte" in str(err)
    else:
        assert tok.vocab_size == 50257 and tok.eot_id == 50256
        assert tok.decode(tok.encode("Hello world")) == "Hello world"


# ---- prepare-text -------------------------------------------------------------------------------------
def _write_corpus(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    docs = [f"Document number {i}: " + "lorem ipsum dolor " * (i % 7 + 1) for i in range(60)]
    (root / "a.txt").write_text("<|endoftext|>".join(docs[:10]))
    with open(root / "b.jsonl", "w") as f:
        for d in docs[10:40]:
            f.write(json.dumps({"text": d, "id": 1}) + "\n")
    with gzip.open(root / "c.jsonl.gz", "wt") as f:
        for d in docs[40:]:
            f.write(json.dumps(d) + "\n")  # bare strings work too
    (root / "ignored.csv").write_text("not text")
    return docs


def test_prepare_text_reads_every_format_and_splits_documents_deterministically(tmp_path):
    docs = _write_corpus(tmp_path / "corpus")
    with pytest.warns(DataWarning, match=r"1 file\(s\) in the input folders are not read .*ignored\.csv"):
        meta = prepare_text([str(tmp_path / "corpus")], str(tmp_path / "out"), tokenizer="byte", val_fraction=0.2, num_workers=2, verbose=False)
    tok = ByteTokenizer()
    train = _documents(_token_stream(tmp_path / "out" / "train"), tok.eot_id)
    val = _documents(_token_stream(tmp_path / "out" / "val"), tok.eot_id)
    # which documents validate, computed from the rule: (file name, index in file)
    placement = [("a.txt", i) for i in range(10)] + [("b.jsonl", i) for i in range(30)] + [("c.jsonl.gz", i) for i in range(20)]
    expect_val = Counter(tuple(tok.encode(d)) for d, (f, i) in zip(docs, placement) if in_validation(f, i, 0.2))
    expect_train = Counter(tuple(tok.encode(d)) for d, (f, i) in zip(docs, placement) if not in_validation(f, i, 0.2))
    assert val == expect_val and train == expect_train and len(val) > 0
    assert meta["splits"]["train"]["tokens"] == sum((len(d) + 1) * n for d, n in train.items())
    assert meta["splits"]["val"]["documents"] == sum(val.values())
    assert meta["tokenizer"] == "byte" and meta["vocab_size"] == 257
    assert json.loads((tmp_path / "out" / "lit_ortho.json").read_text()) == meta


def test_prepare_text_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [f"row {i} " * 5 for i in range(30)]
    pq.write_table(pa.table({"content": texts}), tmp_path / "d.parquet", row_group_size=7)
    prepare_text([str(tmp_path / "d.parquet")], str(tmp_path / "out"), tokenizer="byte", val_fraction=0.0, text_key="content", num_workers=2, verbose=False)
    got = _documents(_token_stream(tmp_path / "out" / "train"), 256)
    assert got == Counter(tuple(ByteTokenizer().encode(t)) for t in texts)
    assert not (tmp_path / "out" / "val").exists()


def test_prepare_text_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="input not found: .*nowhere.txt"):
        prepare_text([str(tmp_path / "nowhere.txt")], str(tmp_path / "o1"), tokenizer="byte")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty corpus: every input file is empty .*empty.txt"):
        prepare_text([str(tmp_path / "empty.txt")], str(tmp_path / "o2"), tokenizer="byte")
    (tmp_path / "blank.txt").write_text("   \n\n")
    with pytest.raises(DataError, match="empty corpus: no text found in .*blank.txt"):
        prepare_text([str(tmp_path / "blank.txt")], str(tmp_path / "o3"), tokenizer="byte", num_workers=1, verbose=False)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="no text files in folder .*imgs"):
        prepare_text([str(tmp_path / "imgs")], str(tmp_path / "o4"), tokenizer="byte")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text key"}\n')
    with pytest.raises(DataError, match="bad.jsonl:2: no 'text' field"):
        prepare_text([str(tmp_path / "bad.jsonl")], str(tmp_path / "o5"), tokenizer="byte", val_fraction=0, num_workers=1, verbose=False)
    assert not (tmp_path / "o5").exists()  # nothing half-written is left behind
    with pytest.raises(DataError, match="unknown tokenizer 'words'; valid choices: gpt2, byte"):
        prepare_text([str(tmp_path / "bad.jsonl")], str(tmp_path / "o6"), tokenizer="words")
    (tmp_path / "o7").mkdir()
    (tmp_path / "o7" / "keep").write_text("x")
    (tmp_path / "ok.txt").write_text("hello")
    with pytest.raises(DataError, match="o7' is not empty; pass --overwrite"):
        prepare_text([str(tmp_path / "ok.txt")], str(tmp_path / "o7"), tokenizer="byte")


# ---- TextDataModule -----------------------------------------------------------------------------------
def test_embedded_corpus_windows_are_real_text(cache):
    import pydoc_data.topics as topics

    dm = TextDataModule(seq_length=64, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.vocab_size == 257 and dm.tokenizer_name == "byte"
    assert (cache / "text" / "pydoc-topics-byte" / "lit_ortho.json").is_file()
    corpus = "".join(topics.topics.values())
    assert dm.meta["splits"]["train"]["tokens"] + dm.meta["splits"]["val"]["tokens"] == len(corpus.encode()) + len(topics.topics)
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 65)
    val_topics = [topics.topics[k] for i, k in enumerate(sorted(topics.topics)) if i % 10 == 5]
    checked = 0
    for row in next(iter(dm.val_dataloader())):
        text = ByteTokenizer().decode(row.tolist())
        if "<|endoftext|>" not in text and "\ufffd" not in text:
            assert any(text in t for t in val_topics)  # validation windows come from held-out topics only
            checked += 1
    assert checked >= 2


def test_text_data_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="data directory not found: .*missing.*lit-ortho prepare-text"):
        TextDataModule(data_dir=str(tmp_path / "missing"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="plain' is not a prepared lit-ortho text directory"):
        TextDataModule(data_dir=str(tmp_path / "plain"))
    (tmp_path / "c.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    prepare_text([str(tmp_path / "c.txt")], str(tmp_path / "d"), tokenizer="byte", val_fraction=0, num_workers=1, verbose=False)
    with pytest.raises(DataError, match="tokenised with 'byte', not tokenizer='gpt2'"):
        TextDataModule(data_dir=str(tmp_path / "d"), tokenizer="gpt2")
    with pytest.raises(DataError, match="fewer than one batch"):
        TextDataModule(data_dir=str(tmp_path / "d"), seq_length=256, batch_size=64).setup("fit")
    chunk = next((tmp_path / "d" / "train").glob("*.bin"))
    good = chunk.read_bytes()
    half = len(good) // 2
    chunk.write_bytes(good[:half] + b"\xff" * 64 + good[half + 64 :])  # same size, garbage tokens (65535 > 256)
    dm = TextDataModule(data_dir=str(tmp_path / "d"), seq_length=16, batch_size=8)
    dm.setup("fit")
    with pytest.raises(DataError, match="token id 65535 in '.*/d' is outside the tokenizer's vocabulary"):
        for batch in dm.train_dataloader():
            dm.on_before_batch_transfer(batch, 0)
    chunk.write_bytes(good[:-10])
    with pytest.raises(DataError, match=f"corrupt data chunk .*{chunk.name}"):
        TextDataModule(data_dir=str(tmp_path / "d"), seq_length=16, batch_size=2).setup("fit")
    chunk.unlink()
    with pytest.raises(DataError, match=f"missing data chunk .*{chunk.name}"):
        TextDataModule(data_dir=str(tmp_path / "d"), seq_length=16, batch_size=2).setup("fit")
    with pytest.raises(DataError, match="unknown tokenizer 'bpe'"):
        TextDataModule(tokenizer="bpe")


def test_text_loader_resumes_from_its_state():
    dm = TextDataModule(seq_length=32, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    first = dm.train_dataloader()
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    expected = [next(it) for _ in range(2)]
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    it2 = iter(resumed)
    got = [next(it2) for _ in range(2)]
    for a, b in zip(expected, got):
        assert torch.equal(a, b)


# ---- images -------------------------------------------------------------------------------------------
def _raw_items(directory):
    from litdata import StreamingDataset

    ds = StreamingDataset(str(directory), shuffle=False)
    return [ds[i] for i in range(len(ds))]


def test_digits_are_the_scikit_learn_images():
    from PIL import Image
    from sklearn.datasets import load_digits

    root = prepare_builtin_images("digits")
    meta = json.loads((root / "lit_ortho.json").read_text())
    assert meta["num_classes"] == 10 and meta["splits"] == {"train": {"images": 1437}, "val": {"images": 360}}
    digits = load_digits()
    val = _raw_items(root / "val")
    for k, item in enumerate(val[:50]):
        i = 5 * k  # every fifth image validates, in order
        pixels = np.asarray(Image.open(io.BytesIO(item["image"])))
        assert np.array_equal(pixels, np.round(digits.images[i] * 255 / 16).astype(np.uint8))
        assert item["label"] == digits.target[i]


def _png(color, size=(12, 10)):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_prepare_images_from_folder_trees(tmp_path):
    tree = tmp_path / "tree"
    files = {}
    for split, n in (("train", 4), ("val", 2)):
        for c, color in (("cat", (255, 0, 0)), ("dog", (0, 255, 0)), ("emu", (0, 0, 255))):
            (tree / split / c).mkdir(parents=True)
            for i in range(n):
                data = _png(color, (10 + i, 10))
                (tree / split / c / f"{i}.png").write_bytes(data)
                files[(split, c, i)] = data
    meta = prepare_images(str(tree), str(tmp_path / "out"), num_workers=2, verbose=False)
    assert meta["classes"] == ["cat", "dog", "emu"] and meta["splits"] == {"train": {"images": 12}, "val": {"images": 6}}
    for split in ("train", "val"):
        got = sorted((item["label"], item["image"]) for item in _raw_items(tmp_path / "out" / split))
        want = sorted((["cat", "dog", "emu"].index(c), data) for (s, c, i), data in files.items() if s == split)
        assert got == want  # original bytes, right labels

    flat = tmp_path / "flat"
    for c in ("a", "b"):
        (flat / c).mkdir(parents=True)
        for i in range(20):
            (flat / c / f"{i}.png").write_bytes(_png((i, i, i)))
    meta = prepare_images(str(flat), str(tmp_path / "out2"), val_fraction=0.25, num_workers=1, verbose=False)
    n_train, n_val = meta["splits"]["train"]["images"], meta["splits"]["val"]["images"]
    assert n_train + n_val == 40 and 0 < n_val < 20

    dm = ImageDataModule(data_dir=str(tmp_path / "out"), image_size=16, batch_size=4, num_workers=0, crop_pct=1.0)
    dm.setup("fit")
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 3, 16, 16) and dm.num_classes == 3
    # a pure-colour image stays that colour after normalisation: channel means tell the class
    for img, label in zip(images, labels):
        assert int(img.mean(dim=(1, 2)).argmax()) == int(label)


def test_image_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="image folder not found: .*nope"):
        prepare_images(str(tmp_path / "nope"), str(tmp_path / "o"))
    (tmp_path / "one" / "only").mkdir(parents=True)
    (tmp_path / "one" / "only" / "x.png").write_bytes(_png((1, 2, 3)))
    with pytest.raises(DataError, match="has 1 class folder"):
        prepare_images(str(tmp_path / "one"), str(tmp_path / "o"))
    bad = tmp_path / "bad"
    for c in ("a", "b"):
        (bad / c).mkdir(parents=True)
        (bad / c / "ok.png").write_bytes(_png((1, 2, 3)))
    (bad / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        prepare_images(str(bad), str(tmp_path / "o"), val_fraction=0.0, num_workers=1, verbose=False)
    with pytest.raises(DataError, match="data directory not found: .*absent.*prepare-images"):
        ImageDataModule(data_dir=str(tmp_path / "absent"))
    with pytest.raises(DataError, match="unknown image dataset 'mnist'; valid choices: digits, cifar10"):
        ImageDataModule(dataset="mnist")
    with pytest.raises(DataError, match="even batch_size"):
        ImageDataModule(mixup=0.8, batch_size=5)


def test_cifar10_batches_are_converted_exactly(tmp_path):
    from PIL import Image

    src = tmp_path / "dl" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 4).tolist()
        arrays[name] = (data, labels)
        with open(src / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)
    root = prepare_builtin_images("cifar10", output_dir=str(tmp_path / "cifar"), download_dir=str(tmp_path / "dl"))
    test_items = _raw_items(root / "val")
    data, labels = arrays["test_batch"]
    for k, item in enumerate(test_items):
        pixels = np.asarray(Image.open(io.BytesIO(item["image"])))
        assert np.array_equal(pixels, data[k].reshape(3, 32, 32).transpose(1, 2, 0)) and item["label"] == labels[k]
    assert len(_raw_items(root / "train")) == 20


def test_mixup_makes_soft_targets_in_training_only():
    dm = ImageDataModule(image_size=32, batch_size=8, num_workers=0, mixup=0.8, cutmix=1.0, crop_pct=1.0)
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))

    class FakeTrainer:
        training = True

    dm.trainer = FakeTrainer()
    mixed, soft = dm.on_after_batch_transfer((images.clone(), labels), 0)
    assert soft.shape == (8, 10) and torch.allclose(soft.sum(-1), torch.ones(8))
    assert (soft.max(-1).values < 1).any() and not torch.equal(mixed, images)
    FakeTrainer.training = False
    same, hard = dm.on_after_batch_transfer((images, labels), 0)
    assert same is images and hard is labels


def test_image_datasets_work_in_spawned_workers():
    """The datasets the module builds pickle (spawn start method: macOS, Windows) and stream in a spawn worker."""
    from litdata import StreamingDataLoader

    dm = ImageDataModule(image_size=16, batch_size=4, val_batch_size=4, num_workers=0, crop_pct=1.0)
    dm.prepare_data()
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        clone = pickle.loads(pickle.dumps(loader.dataset))
        image, label = clone[0]
        assert image.shape == (3, 16, 16) and 0 <= label < 10
    expected_images, expected_labels = next(iter(dm.val_dataloader()))
    spawned = StreamingDataLoader(dm.val_dataloader().dataset, batch_size=4, num_workers=1, multiprocessing_context="spawn")
    images, labels = next(iter(spawned))
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
