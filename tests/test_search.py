"""Cosine neighbour search (exact and FAISS) against brute force, the kNN anomaly score against a
loop transcription, the index reader, and the ``search`` / ``anomaly`` commands."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
from helpers_finetune import fake_pretrain_run, toy_images, write_toy_h5
from sklearn.neighbors import NearestNeighbors

from deeplense_ssl.config import EmbedConfig, config_from_sources
from deeplense_ssl.embedding import embed_files
from deeplense_ssl.errors import ConfigError, DataError
from deeplense_ssl.plots import fig_montage
from deeplense_ssl.search import (
    ArrayStore,
    EmbeddingIndex,
    ExactSearch,
    check_same_backbone,
    faiss_available,
    knn_anomaly_scores,
    nearest_neighbours,
    unit_rows,
)
from deeplense_ssl_cli.errors import run_with_clean_errors
from deeplense_ssl_cli.main import cli

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed")


def _vectors(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _sklearn(queries: np.ndarray, data: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(data)
    dist, ids = nn.kneighbors(queries)
    return 1.0 - dist, ids


# ----------------------------------------------------------------------------- neighbours


@pytest.mark.parametrize("chunk_rows", [7, 1000])
def test_exact_search_matches_sklearn_brute_force(chunk_rows):
    data, queries = _vectors(300), _vectors(9, seed=1)
    sims, ids = ExactSearch(ArrayStore(data), chunk_rows=chunk_rows).search(queries, 5)
    ref_sims, ref_ids = _sklearn(queries, data, 5)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert (np.diff(sims, axis=1) <= 0).all()


def test_exclude_drops_the_query_row_itself():
    data = _vectors(50)
    rows = np.array([3, 17, 49])
    nb = nearest_neighbours(data[rows], ArrayStore(data), 4, exclude=rows, backend="exact")
    _, ref = _sklearn(data[rows], data, 5)
    assert ref[:, 0].tolist() == rows.tolist()  # without exclusion the row finds itself
    np.testing.assert_array_equal(nb.ids, ref[:, 1:])


@needs_faiss
@pytest.mark.parametrize("exclude", [False, True])
def test_faiss_gives_the_exact_neighbours(exclude):
    data, queries = _vectors(400, seed=2), _vectors(12, seed=3)
    rows = np.arange(12) * 30 if exclude else None
    queries = data[rows] if exclude else queries
    exact = nearest_neighbours(queries, ArrayStore(data), 6, exclude=rows, backend="exact")
    flat = nearest_neighbours(queries, ArrayStore(data), 6, exclude=rows, backend="faiss")
    assert (exact.backend, flat.backend) == ("exact", "faiss")
    np.testing.assert_array_equal(flat.ids, exact.ids)
    np.testing.assert_allclose(flat.similarity, exact.similarity, atol=1e-5)
    ivf = nearest_neighbours(
        queries, ArrayStore(data), 6, exclude=rows, backend="faiss", ivf_lists=4, nprobe=4
    )  # every list probed: exact
    np.testing.assert_array_equal(ivf.ids, exact.ids)


def test_zero_vectors_and_bad_arguments():
    data = _vectors(10)
    data[4] = 0.0
    assert np.isfinite(unit_rows(data)).all() and not unit_rows(data)[4].any()
    with pytest.raises(ConfigError, match="k=10 but the index has 9"):
        nearest_neighbours(data[:1], ArrayStore(data), 10, exclude=np.array([0]))
    with pytest.raises(DataError, match="queries must be"):
        nearest_neighbours(_vectors(2, d=8), ArrayStore(data), 3)
    with pytest.raises(ConfigError, match="ivf-lists"):
        nearest_neighbours(data[:1], ArrayStore(data), 3, backend="exact", ivf_lists=2)


# ----------------------------------------------------------------------------- anomaly score


def _anomaly_loop(index: np.ndarray, reference: np.ndarray | None, k: int) -> np.ndarray:
    """score_i = mean over the k nearest reference rows of (1 - cosine), self excluded."""
    ref = index if reference is None else reference
    scores = []
    for i, e in enumerate(index):
        dists = []
        for j, r in enumerate(ref):
            if reference is None and j == i:
                continue
            cos = float(e @ r) / (np.linalg.norm(e) * np.linalg.norm(r))
            dists.append(1.0 - cos)
        scores.append(np.mean(sorted(dists)[:k]))
    return np.array(scores)


@pytest.mark.parametrize("backend", ["exact", pytest.param("faiss", marks=needs_faiss)])
def test_anomaly_scores_match_a_loop_transcription(backend):
    index, reference = _vectors(40, seed=4), _vectors(25, seed=5)
    own = knn_anomaly_scores(ArrayStore(index), None, 3, backend=backend, query_rows=16)
    np.testing.assert_allclose(own.scores, _anomaly_loop(index, None, 3), atol=1e-5)
    assert not (own.neighbours.ids == np.arange(40)[:, None]).any()
    ref = knn_anomaly_scores(ArrayStore(index), ArrayStore(reference), 5, backend=backend)
    np.testing.assert_allclose(ref.scores, _anomaly_loop(index, reference, 5), atol=1e-5)


def test_an_odd_vector_scores_highest():
    rng = np.random.default_rng(0)
    normal = np.ones((60, 8), np.float32) + 0.1 * rng.standard_normal((60, 8)).astype(np.float32)
    odd = -np.ones((1, 8), np.float32)
    scores = knn_anomaly_scores(ArrayStore(np.vstack([normal, odd])), None, 5).scores
    assert int(np.argmax(scores)) == 60


# ----------------------------------------------------------------------------- index files


@pytest.fixture(scope="module")
def indexed(module_tmp):
    """A run, 30 labelled toy images, their index; a second run of another stem and its index."""
    root = module_tmp("search")
    fake_pretrain_run(root / "run")
    fake_pretrain_run(root / "other", stem="imagenet", seed=1)
    write_toy_h5(root / "toy.h5", n_per_class=10, seed=0)
    for run, out in (("run", "emb.h5"), ("other", "other.h5")):
        cfg = {
            "checkpoint": str(root / run), "data": [str(root / "toy.h5")], "out": str(root / out),
            "device": "cpu", "batch_size": 8,
        }  # fmt: skip
        embed_files(config_from_sources(EmbedConfig, None, cfg), progress=False)
    return root


def test_index_reader_and_its_refusals(indexed, tmp_path):
    with EmbeddingIndex(indexed / "emb.h5") as index, EmbeddingIndex(indexed / "other.h5") as other:
        assert len(index) == 30 and index.dim == 512 and index.class_names[1] == "cdm"
        d = index.describe([12, 0])
        assert [x["source"] for x in d] == ["toy[12]", "toy[0]"] and d[0]["label"] == "cdm"
        np.testing.assert_array_equal(index.rows([5, 2, 5]), index.read(0, 30)[[5, 2, 5]])
        with pytest.raises(DataError, match="row 30 is outside"):
            index.rows([30])
        with pytest.raises(DataError, match="backbone"):
            check_same_backbone(index, other)
    with pytest.raises(DataError, match="no such embedding index"):
        EmbeddingIndex(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a readable HDF5"):
        EmbeddingIndex(tmp_path / "junk.h5")
    with pytest.raises(DataError, match="not an embedding index"):
        EmbeddingIndex(indexed / "toy.h5")
    incomplete = tmp_path / "inc.h5"
    incomplete.write_bytes((indexed / "emb.h5").read_bytes())
    with h5py.File(incomplete, "a") as f:
        f.attrs["complete"] = 0
    with pytest.raises(DataError, match="incomplete"):
        EmbeddingIndex(incomplete)


def test_montage_figure_has_one_tile_per_image():
    images = [np.random.default_rng(i).random((1, 8, 8)) for i in range(5)]
    fig = fig_montage(images, [f"t{i}" for i in range(5)], ncols=3, title="x")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 6 and len(shown) == 5
    assert [ax.get_title() for ax in shown] == ["t0", "t1", "t2", "t3", "t4"]


# ----------------------------------------------------------------------------- the commands


def _run(capsys, argv) -> tuple[int, str, str]:
    code = run_with_clean_errors(cli, [str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line(code: int, err: str, *expected: str) -> None:
    assert code == 1, err
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)


def test_cli_search_by_row_and_by_image(indexed, tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["search", "--index", indexed / "emb.h5", "--query-index", "12,3", "-k", 4]
    code, stdout, err = _run(capsys, [*argv, "--out", out, "--backend", "exact"])
    assert code == 0, err
    assert "query 0: toy[12]" in stdout and "query 1: toy[3]" in stdout
    table = json.loads((out / "neighbours.json").read_text())["neighbours"]
    with EmbeddingIndex(indexed / "emb.h5") as index:
        vectors = index.read(0, 30)
    _, ref = _sklearn(vectors[[12, 3]], vectors, 5)
    assert [r["row"] for r in table] == [*ref[0, 1:], *ref[1, 1:]]
    rows = list(csv.DictReader((out / "neighbours.csv").open()))
    assert len(rows) == 8 and rows[0]["source"] == f"toy[{ref[0, 1]}]"
    assert (out / "montage.png").read_bytes()[:4] == b"\x89PNG"
    # an image file as the query: embedded with the index's run, it finds itself first
    images, labels = toy_images(10, size=16, seed=0)
    np.save(tmp_path / "q.npy", images[[12]])
    code, stdout, err = _run(
        capsys, ["search", "--index", indexed / "emb.h5", "--query", tmp_path / "q.npy", "-k", 2]
    )
    assert code == 0, err
    first = stdout.splitlines()[2].split()
    assert first[0] == "1" and float(first[1]) > 0.9999 and first[2] == "12"


def test_cli_search_bad_inputs_are_one_line_and_write_nothing(indexed, tmp_path, capsys):
    rgb, _ = toy_images(1, size=16, chans=3, n_classes=1)
    np.save(tmp_path / "rgb.npy", rgb)
    big, _ = toy_images(1, size=24, n_classes=1)
    np.save(tmp_path / "big.npy", big)
    out = tmp_path / "s"
    base = ["search", "--index", indexed / "emb.h5", "--out", out]
    cases = [
        (["--query", tmp_path / "rgb.npy"], ["rgb.npy", "3 band(s)", "trained on 1"]),
        (["--query", tmp_path / "big.npy"], ["big.npy", "24x24 px", "16x16"]),
        (
            ["--query", tmp_path / "rgb.npy", "--checkpoint", indexed / "other"],
            ["emb.h5", "backbone"],
        ),
        (["--query-index", "99"], ["emb.h5", "row 99 is outside [0, 30)"]),
        (["--query-index", "1", "-k", "30"], ["k=30", "29 candidate"]),
    ]
    for extra, expected in cases:
        code, _, err = _run(capsys, [*base, *extra])
        _assert_one_line(code, err, *expected)
        assert not out.exists()
    code, _, err = _run(capsys, ["search", "--index", tmp_path / "missing.h5", "--query-index", 0])
    _assert_one_line(code, err, "missing.h5", "no such embedding index")
    code, _, err = _run(capsys, ["search", "--index", indexed / "emb.h5"])
    _assert_one_line(code, err, "--query IMAGE or --query-index")


def test_cli_anomaly_writes_sorted_scores_and_a_montage(indexed, tmp_path, capsys):
    out = tmp_path / "a"
    argv = ["anomaly", "--index", indexed / "emb.h5", "-k", 3, "--top", 4, "--out", out]
    code, stdout, err = _run(capsys, [*argv, "--no-progress"])
    assert code == 0, err
    with EmbeddingIndex(indexed / "emb.h5") as index:
        expected = _anomaly_loop(index.read(0, 30).astype(np.float64), None, 3)
    with h5py.File(out / "anomaly_scores.h5", "r") as f:
        np.testing.assert_allclose(f["score"][()], expected, atol=1e-5)
        assert f["rank"][int(np.argmax(expected))] == 1 and f.attrs["k"] == 3
        assert [s.decode() for s in f["sources"][:2]] == ["toy[0]", "toy[1]"]
    rows = list(csv.DictReader((out / "anomaly_scores.csv").open()))
    assert [int(r["row"]) for r in rows] == list(np.argsort(-expected, kind="stable"))
    assert (out / "anomaly_top.png").read_bytes()[:4] == b"\x89PNG"
    assert len(stdout.strip().splitlines()) == 5


def test_cli_anomaly_refuses_a_reference_of_another_backbone(indexed, tmp_path, capsys):
    out = tmp_path / "a"
    argv = ["anomaly", "--index", indexed / "emb.h5", "--reference", indexed / "other.h5"]
    code, _, err = _run(capsys, [*argv, "--out", out, "--no-progress"])
    _assert_one_line(code, err, "other.h5", "backbone")
    assert not out.exists()
    code, _, err = _run(capsys, ["anomaly", "--index", tmp_path / "none.h5", "--out", out])
    _assert_one_line(code, err, "none.h5", "no such embedding index")
    assert not out.exists()
