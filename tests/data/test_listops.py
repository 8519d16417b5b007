"""ListOps: the evaluator on hand-worked cases, the tokenizer, the generator; and the data cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from elfatt_lab.data.cache import cache_path, cached
from elfatt_lab.data.listops import (
    OPERATORS,
    PAD_ID,
    VOCAB,
    VOCAB_SIZE,
    detokenize_listops,
    evaluate_listops,
    generate_listops,
    tokenize_listops,
)

SHORT = dict(min_length=10, max_length=60)

CASES = [
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[SM 5 6 ]", 1),
    ("[MED 1 5 3 ]", 3),
    # LRA's MED is int(np.median(...)): the two middle values averaged, then truncated.
    ("[MED 1 2 3 4 ]", 2),
    ("[MED 1 1 9 9 ]", 5),
    ("[MED 9 0 ]", 4),
    ("[MIN 3 [MAX 1 8 ] 5 ]", 3),
    ("[SM 9 9 9 [SM 5 5 ] ]", 7),
    ("[MAX [MIN [SM 4 4 ] 9 ] [MED 2 0 7 ] ]", 8),
    ("6", 6),
]


@pytest.mark.parametrize(("expression", "value"), CASES, ids=[case[0] for case in CASES])
def test_evaluate_known_cases(expression: str, value: int) -> None:
    assert evaluate_listops(expression) == value


def test_median_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        args = rng.integers(0, 10, size=rng.integers(2, 11)).tolist()
        assert evaluate_listops(f"[MED {' '.join(map(str, args))} ]") == int(np.median(args)), args


@pytest.mark.parametrize("expression", ["[MAX 1 2", "[MAX ]", "1 2", "[FOO 1 ]", "]", "[MAX 1 ] 3", "12", ""])
def test_evaluate_rejects_malformed(expression: str) -> None:
    with pytest.raises(ValueError):
        evaluate_listops(expression)


def test_vocabulary() -> None:
    assert VOCAB_SIZE == len(VOCAB) == 16
    assert VOCAB[PAD_ID] == "<pad>"
    assert set(VOCAB) == {"<pad>", *"0123456789", *OPERATORS, "]"}


@pytest.mark.parametrize("expression", [case[0] for case in CASES])
def test_tokenizer_round_trip(expression: str) -> None:
    ids = tokenize_listops(expression, 40)
    assert ids.dtype == torch.long and ids.shape == (40,)
    count = len(expression.split())
    assert (ids[:count] != PAD_ID).all() and (ids[count:] == PAD_ID).all()
    assert detokenize_listops(ids) == expression


def test_tokenizer_truncates_and_rejects_unknown_tokens() -> None:
    ids = tokenize_listops("[MAX 2 9 [MIN 4 7 ] 0 ]", 3)
    assert detokenize_listops(ids) == "[MAX 2 9"
    with pytest.raises(ValueError, match="unknown token"):
        tokenize_listops("[MAX 2 x ]", 8)


def test_generated_shapes_lengths_and_labels() -> None:
    tokens, labels = generate_listops(300, seed=0, **SHORT)
    assert tokens.dtype == labels.dtype == torch.long
    assert tokens.shape == (300, 60) and labels.shape == (300,)
    lengths = (tokens != PAD_ID).sum(dim=1)
    assert ((lengths > 10) & (lengths < 60)).all()
    for row, length in zip(tokens, lengths, strict=True):
        assert (row[length:] == PAD_ID).all()
    # Labels come from the generator's own bottom-up values; the evaluator parses the tokens independently of it.
    assert [evaluate_listops(detokenize_listops(row)) for row in tokens] == labels.tolist()


def test_seq_len_pads_and_truncates() -> None:
    tokens, _ = generate_listops(20, seed=0, **SHORT)
    wide, _ = generate_listops(20, seed=0, seq_len=80, **SHORT)
    narrow, _ = generate_listops(20, seed=0, seq_len=12, **SHORT)
    assert torch.equal(wide[:, :60], tokens) and (wide[:, 60:] == PAD_ID).all()
    assert torch.equal(narrow, tokens[:, :12])


def test_deterministic_for_a_seed() -> None:
    first = generate_listops(200, seed=3, **SHORT)
    again = generate_listops(200, seed=3, **SHORT)
    other = generate_listops(200, seed=4, **SHORT)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


def test_label_distribution() -> None:
    """All ten values occur. As in LRA's data, 0 and 9 are the most common (MIN and MAX of many arguments), about
    15-17% each against 7-10% for the others; no class may leave 0.4x-2.5x of uniform."""
    _, labels = generate_listops(3000, seed=0, **SHORT)
    share = torch.bincount(labels, minlength=10).double() / len(labels)
    assert share.min() > 0.04 and share.max() < 0.25, share.tolist()


@pytest.mark.parametrize(
    "kwargs", [dict(max_args=1), dict(max_depth=2, max_args=3, min_length=10, max_length=60), dict(min_length=59)]
)
def test_impossible_settings_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate_listops(1, seed=0, **{**SHORT, **kwargs})


def test_cache_builds_once_and_reloads(tmp_path) -> None:
    calls = []

    def build() -> dict[str, torch.Tensor]:
        calls.append(1)
        tokens, labels = generate_listops(50, seed=1, **SHORT)
        return dict(tokens=tokens, labels=labels)

    params = dict(samples=50, seed=1, **SHORT)
    first = cached("listops", params, build, root=tmp_path)
    again = cached("listops", dict(reversed(params.items())), build, root=tmp_path)
    assert len(calls) == 1
    assert first.keys() == again.keys() == {"tokens", "labels"}
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert [path.name for path in tmp_path.iterdir()] == [cache_path("listops", params, tmp_path).name]
    cached("listops", {**params, "seed": 2}, build, root=tmp_path)
    assert len(calls) == 2


def test_cache_folder_from_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ELFATT_DATA_DIR", str(tmp_path / "env"))
    data = cached("toy", dict(n=3), lambda: dict(x=torch.arange(3)))
    assert cache_path("toy", dict(n=3)).parent == tmp_path / "env"
    assert torch.equal(cached("toy", dict(n=3), lambda: pytest.fail("rebuilt"))["x"], data["x"])


def test_cache_failed_build_leaves_nothing(tmp_path) -> None:
    with pytest.raises(TypeError):
        cached("bad", dict(n=1), lambda: dict(x=[1, 2]), root=tmp_path)
    with pytest.raises(ValueError):
        cached("../escape", dict(n=1), lambda: dict(x=torch.zeros(1)), root=tmp_path)
    assert not any(tmp_path.iterdir())
