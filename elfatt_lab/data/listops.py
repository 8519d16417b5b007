"""ListOps, the Long Range Arena's hierarchical-reasoning task, generated locally.

ListOps (Nangia & Bowman, "ListOps: A Diagnostic Dataset for Latent Tree Learning", NAACL SRW 2018,
https://arxiv.org/abs/1804.06028) as the Long Range Arena uses it (Tay et al., "Long Range Arena: A Benchmark for
Efficient Transformers", ICLR 2021, https://arxiv.org/abs/2011.04006). The sampler re-implements LRA's
``lra_benchmarks/data/listops.py``:

- a node is a digit with probability 0.75 (always at ``max_depth``, the root being depth 1), otherwise one of
  MAX, MIN, MED, SM drawn uniformly with 2 to ``max_args`` arguments (inclusive), each a node one level deeper;
- the length counts tokens, an operator being two (``[MAX`` and its ``]``), a digit one; a tree is kept only when
  ``min_length < length < max_length`` (strict, as in LRA) and everything else is drawn again;
- MED is ``int(np.median(args))``: the mean of the two middle values for an even count, truncated, so
  ``[MED 1 2 3 4 ]`` is 2 and ``[MED 1 1 9 9 ]`` is 5 (not a lower or upper median); SM is the sum modulo 10.

LRA's defaults are depth 10, 10 arguments and lengths in (500, 2000). LRA writes parentheses around every
sub-term and its input pipeline strips them; here the sequence is the stripped one. LRA also drops repeated trees,
which only matters for short sequences; this sampler does not. The labels are not uniform, in LRA's data as here:
0 and 9 (MIN and MAX of many arguments) come up about 17% of the time each, the other values 7-10%.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from elfatt_lab._progress import progress_bar

__all__ = [
    "GENERATOR_VERSION",
    "OPERATORS",
    "PAD_ID",
    "VOCAB",
    "VOCAB_SIZE",
    "detokenize_listops",
    "evaluate_listops",
    "generate_listops",
    "tokenize_listops",
]

# Part of every cache key: raise it whenever the generated samples change, so old caches are not reused.
GENERATOR_VERSION = 1

OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
CLOSE = "]"
DIGITS = tuple(str(digit) for digit in range(10))
VOCAB = ("<pad>", *DIGITS, *OPERATORS, CLOSE)
VOCAB_SIZE = len(VOCAB)
PAD_ID = 0
TOKEN_ID = {token: index for index, token in enumerate(VOCAB)}
DIGIT_ID = 1
OPERATOR_ID = TOKEN_ID[OPERATORS[0]]
CLOSE_ID = TOKEN_ID[CLOSE]
# The chance that a node above max_depth is a digit: 1 - VALUE_P in LRA.
LEAF_PROBABILITY = 0.75


def _apply(operator: int, args: list[int]) -> int:
    """Value of operator ``OPERATORS[operator]`` over ``args``."""
    if operator == 0:
        return max(args)
    if operator == 1:
        return min(args)
    if operator == 2:
        ordered, middle = sorted(args), len(args) // 2
        # int(np.median(args)) as in LRA: the two middle values averaged and truncated.
        return ordered[middle] if len(args) % 2 else (ordered[middle - 1] + ordered[middle]) // 2
    return sum(args) % 10


class _Uniforms:
    """Uniform draws in ``[0, 1)`` from a numpy Generator, fetched in blocks (one call per draw is slow)."""

    def __init__(self, rng: np.random.Generator, block: int = 4096) -> None:
        self.rng, self.block = rng, block
        self.values: list[float] = []
        self.index = 0

    def __call__(self) -> float:
        if self.index == len(self.values):
            self.values, self.index = self.rng.random(self.block).tolist(), 0
        self.index += 1
        return self.values[self.index - 1]


class _TooLong(Exception):
    pass


def _tree(uniform: _Uniforms, out: list[int], depth: int, max_depth: int, max_args: int, max_length: int) -> int:
    """Append a random tree's token ids to ``out`` and return its value; raise ``_TooLong`` past ``max_length``."""
    if depth >= max_depth or uniform() < LEAF_PROBABILITY:
        value = int(uniform() * 10)
        out.append(DIGIT_ID + value)
        return value
    num_args = 2 + int(uniform() * (max_args - 1))
    operator = int(uniform() * len(OPERATORS))
    out.append(OPERATOR_ID + operator)
    args = [_tree(uniform, out, depth + 1, max_depth, max_args, max_length) for _ in range(num_args)]
    out.append(CLOSE_ID)
    # The tree would be rejected anyway: stop growing it.
    if len(out) >= max_length:
        raise _TooLong
    return _apply(operator, args)


def _longest(max_depth: int, max_args: int) -> int:
    """Most tokens a tree can have: every node above ``max_depth`` an operator with ``max_args`` arguments."""
    length = 1
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


def generate_listops(
    num_samples: int,
    *,
    seed: int,
    max_depth: int = 10,
    max_args: int = 10,
    min_length: int = 500,
    max_length: int = 2000,
    seq_len: int | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Sample ListOps expressions and their values, deterministically for a seed.

    Args:
        num_samples: number of expressions.
        seed: seed of the numpy Generator that draws everything.
        max_depth: deepest level of the tree, the root being level 1.
        max_args: most arguments of an operator (at least 2).
        min_length: kept expressions have more tokens than this.
        max_length: kept expressions have fewer tokens than this.
        seq_len: width of the token tensor; ``max_length`` when None (no expression is then truncated).
        progress: show a progress bar.

    Returns:
        token ids ``[num_samples, seq_len]`` (int64, right-padded with :data:`PAD_ID`) and labels ``[num_samples]``
        (int64, the value 0-9 of each expression).
    """
    if max_args < 2:
        raise ValueError(f"max_args must be at least 2, got {max_args}")
    if min(max_length - 1, _longest(max_depth, max_args)) <= min_length:
        raise ValueError(
            f"no tree of depth {max_depth} with {max_args} arguments has a length strictly between "
            f"min_length {min_length} and max_length {max_length}"
        )
    seq_len = max_length if seq_len is None else seq_len
    uniform = _Uniforms(np.random.default_rng(seed))
    tokens = torch.full((num_samples, seq_len), PAD_ID, dtype=torch.long)
    labels = torch.zeros(num_samples, dtype=torch.long)
    done = 0
    with progress_bar(progress, transient=True) as bar:
        task = bar.add_task("ListOps", total=num_samples) if bar else None
        while done < num_samples:
            ids: list[int] = []
            try:
                value = _tree(uniform, ids, 1, max_depth, max_args, max_length)
            except _TooLong:
                continue
            if min_length < len(ids) < max_length:
                ids = ids[:seq_len]
                tokens[done, : len(ids)] = torch.tensor(ids)
                labels[done] = value
                done += 1
                if bar:
                    bar.update(task, completed=done)
    return tokens, labels


def evaluate_listops(expression: str) -> int:
    """Value of a ListOps expression such as ``"[MAX 2 9 [MIN 4 7 ] 0 ]"`` (tokens separated by spaces)."""
    stack: list[tuple[int, list[int]]] = []
    result: int | None = None
    for token in expression.split():
        if result is not None:
            raise ValueError(f"tokens after the end of {expression!r}")
        if token in OPERATORS:
            stack.append((OPERATORS.index(token), []))
        elif token == CLOSE:
            if not stack or not stack[-1][1]:
                raise ValueError(f"unbalanced or empty operator in {expression!r}")
            value = _apply(*stack.pop())
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        elif token in DIGITS:
            if stack:
                stack[-1][1].append(int(token))
            else:
                result = int(token)
        else:
            raise ValueError(f"unknown token {token!r} in {expression!r}")
    if stack or result is None:
        raise ValueError(f"incomplete expression {expression!r}")
    return result


def tokenize_listops(expression: str, length: int) -> Tensor:
    """Token ids ``[length]`` (int64) of an expression, right-padded with :data:`PAD_ID` or truncated."""
    try:
        ids = [TOKEN_ID[token] for token in expression.split()][:length]
    except KeyError as error:
        raise ValueError(f"unknown token {error.args[0]!r} in {expression!r}") from None
    out = torch.full((length,), PAD_ID, dtype=torch.long)
    out[: len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def detokenize_listops(ids: Tensor) -> str:
    """The expression a 1-D tensor of token ids spells, padding dropped."""
    return " ".join(VOCAB[i] for i in ids.tolist() if i != PAD_ID)
