"""Corpus-level caption metrics (CIDEr-D and BLEU-1..4) computed the way the COCO caption toolkit does.

Published captioning numbers almost always come from `pycocoevalcap` (the COCO caption evaluation code).
Its scores are *corpus* statistics: CIDEr-D weights n-grams by their document frequency over the reference
sets of the evaluated images, and BLEU pools n-gram matches and lengths over all images before taking the
geometric mean. Averaging per-caption scores from another implementation therefore does not reproduce the
published numbers. This module re-implements both scorers in plain Python so that:

* the numbers match `pycocoevalcap` 1.2's `Cider` and `Bleu(4)` on the same tokenized text (the tests pin
  values computed once with the real scorers), and
* the project does not depend on `pycocoevalcap` or on Java, which its PTB tokenizer needs.

Inputs follow the `pycocoevalcap` convention: `candidates` maps an image key to one generated caption and
`references` maps the same keys to a non-empty list of reference captions. By default the metrics expect
text that is already tokenized (lowercase, space-separated words, punctuation removed); pass
`tokenize=True` to run :func:`simple_tokenize` on every caption first. :func:`caption_scores` is a
list-based convenience wrapper that tokenizes by default.

Tokenization. `pycocoevalcap` runs the Stanford PTB tokenizer (CoreNLP 3.4.1, `-lowerCase`) and then drops
the punctuation tokens ``'' ' `` ` . ? ! , : - -- ... ;``. :func:`simple_tokenize` is a regex approximation
of that pipeline for ordinary captions: it lowercases; drops the punctuation above, brackets and double
quotes; splits English clitics the way PTB does (``dog's -> dog 's``, ``don't -> do n't``,
``cannot -> can not``); and keeps word-internal hyphens, apostrophes and number punctuation
(``t-shirt``, ``o'clock``, ``3.5``, ``1,000``, ``3:30``). Known differences from the Java pipeline, all
rare in captions: PTB keeps more abbreviation periods than the few handled here (e.g. ``no.``, a single
letter ``a.``); it keeps runs such as ``!!`` and ``?!`` and lowercased bracket tokens (``-lrb-``), because
`pycocoevalcap`'s removal list only has the uppercase forms; and it treats leading apostrophes (``'90s``,
``rock 'n' roll``) and feet/inch marks differently. Scores computed with :func:`simple_tokenize` are
therefore comparable to, but not guaranteed identical with, official numbers on raw text; where both
tokenizers give the same tokens the scores are identical.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

NGram = tuple[str, ...]

# Constants from pycocoevalcap's bleu_scorer.py: `tiny` keeps a zero match count from making the product
# exactly 0 before the brevity penalty and `small` avoids division by zero for empty candidates. They make
# BLEU of an order with no matches a tiny positive number rather than 0, which we must copy to match.
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9

# --------------------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------------------

# Typographic quotes are normalised by PTB before its quote tokens are removed; map them to ASCII first.
_UNICODE_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
# Characters that are never part of a caption word: PTB makes them separate tokens and pycocoevalcap
# drops them (brackets are meant to be dropped too; see the module docstring for the case quirk).
_ALWAYS_PUNCT = re.compile(r"[\"`!?()\[\]{}]")
# Ellipses and double dashes are standalone PTB tokens even inside a word ("hello...world", "a--b").
_RUNS = re.compile(r"\.{2,}|-{2,}")
# Commas, colons and semicolons are split off unless they sit between digits ("1,000", "3:30").
_SEPARATORS = re.compile(r"(?<!\d)[,;:]|[,;:](?!\d)")
# PTB splits these clitics into their own tokens, which pycocoevalcap keeps ("man's" -> "man 's").
_NEG_CLITIC = re.compile(r"(?<=\w)(n't)\b")
_CLITIC = re.compile(r"(?<=\w)('s|'re|'ve|'ll|'d|'m)\b")
_CLITIC_TOKENS = frozenset({"'s", "'re", "'ve", "'ll", "'d", "'m", "n't"})
# PTB also splits these contractions written as one word ("cannot" -> "can not").
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na"}
# PTB separates currency and percent signs from numbers ("$5" -> "$ 5", "10%" -> "10 %") and keeps them.
_SYMBOLS = re.compile(r"([$%])")
# Letter-dot acronyms keep their final period in PTB ("u.s.", "p.m.", "e.g."), even at sentence end.
_ACRONYM = re.compile(r"(?:[a-z]\.){2,}")
# A few abbreviations PTB keeps with their period; only common caption words, not PTB's whole list.
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "mt", "vs", "etc"})


def _clean_token(token: str) -> str:
    """Strip sentence punctuation from the edges of one whitespace token ("" when nothing is left)."""
    if token in _CLITIC_TOKENS or _ACRONYM.fullmatch(token):
        return token
    # Trailing periods end a sentence; edge apostrophes are single quotes ('hi', the dogs' toys).
    stripped = token.rstrip(".'").lstrip("'").rstrip(".")
    if token.endswith(".") and stripped in _ABBREVIATIONS:
        return stripped + "."
    # Leftovers like "-" or "'" are punctuation tokens that pycocoevalcap removes.
    if not stripped or set(stripped) <= set("-.'"):
        return ""
    return _SPLIT_WORDS.get(stripped, stripped)


def simple_tokenize(text: str) -> str:
    """Lowercase `text` and remove punctuation like pycocoevalcap's PTB tokenizer step; words joined by spaces.

    Examples: ``"A man's surfboard, on the beach."`` -> ``"a man 's surfboard on the beach"``;
    ``'Don\'t (really) "stop"!'`` -> ``"do n't really stop"``. See the module docstring for the
    differences from the Java tokenizer.
    """
    text = text.lower().translate(_UNICODE_QUOTES)
    text = _ALWAYS_PUNCT.sub(" ", text)
    text = _RUNS.sub(" ", text)
    text = _SEPARATORS.sub(" ", text)
    text = _NEG_CLITIC.sub(r" \1", text)
    text = _CLITIC.sub(r" \1", text)
    text = _SYMBOLS.sub(r" \1 ", text)
    tokens = (_clean_token(t) for t in text.split())
    return " ".join(t for t in tokens if t)


# --------------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------------


def _ngram_counts(words: Sequence[str], max_n: int) -> Counter[NGram]:
    """Counts of every n-gram of order 1..max_n (one Counter for all orders, as pycocoevalcap's precook)."""
    counts: Counter[NGram] = Counter()
    for k in range(1, max_n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def _prepare(
    candidates: Mapping[K, str], references: Mapping[K, Sequence[str]], tokenize: bool
) -> tuple[list[K], list[str], list[list[str]]]:
    """Validate the pycocoevalcap-style inputs; return keys (in `candidates` order), candidates, references."""
    if set(candidates) != set(references):
        missing = set(candidates) ^ set(references)
        raise ValueError(
            f"candidates and references must have the same keys; differing keys: {sorted(map(repr, missing))[:5]}"
        )
    if not candidates:
        raise ValueError("cannot score an empty corpus")
    keys = list(candidates)
    cands: list[str] = []
    refs: list[list[str]] = []
    for key in keys:
        cand, key_refs = candidates[key], references[key]
        # pycocoevalcap takes one-element lists of hypotheses; a list here is almost surely that shape.
        if not isinstance(cand, str):
            raise TypeError(f"candidate for key {key!r} must be a str, got {type(cand).__name__}")
        # A bare string would be iterated character by character and silently give nonsense.
        if isinstance(key_refs, str) or not all(isinstance(r, str) for r in key_refs):
            raise TypeError(f"references for key {key!r} must be a list of str")
        if len(key_refs) == 0:
            raise ValueError(f"references for key {key!r} are empty")
        if tokenize:
            cand, key_refs = simple_tokenize(cand), [simple_tokenize(r) for r in key_refs]
        cands.append(cand)
        refs.append(list(key_refs))
    return keys, cands, refs


# --------------------------------------------------------------------------------------------------------
# CIDEr-D
# --------------------------------------------------------------------------------------------------------


def _tfidf(
    counts: Counter[NGram], doc_freq: Counter[NGram], log_num_images: float, n: int
) -> tuple[list[dict[NGram, float]], list[float], int]:
    """TF-IDF vectors per n-gram order, their L2 norms, and pycocoevalcap's length (the bigram count)."""
    vecs: list[dict[NGram, float]] = [{} for _ in range(n)]
    sq_norms = [0.0] * n
    length = 0
    for ngram, tf in counts.items():
        order = len(ngram) - 1
        # n-grams absent from every reference set get df 1 (idf = log N), hence max(1, df).
        weight = float(tf) * (log_num_images - math.log(max(1.0, doc_freq.get(ngram, 0))))
        vecs[order][ngram] = weight
        sq_norms[order] += weight**2
        # pycocoevalcap measures length as the number of bigrams (words - 1), not words. Only differences
        # enter the penalty, and they agree with word counts unless a side is empty, where the score is 0
        # anyway; we still copy it to stay exact.
        if order == 1:
            length += tf
    return vecs, [math.sqrt(s) for s in sq_norms], length


def cider_d(
    candidates: Mapping[K, str],
    references: Mapping[K, Sequence[str]],
    *,
    tokenize: bool = False,
    n: int = 4,
    sigma: float = 6.0,
) -> tuple[float, list[float]]:
    """CIDEr-D of `candidates` against `references`, as pycocoevalcap's ``Cider().compute_score``.

    Args:
        candidates: image key -> one candidate caption.
        references: image key -> non-empty list of reference captions; same keys as `candidates`.
        tokenize: run :func:`simple_tokenize` on all captions first; otherwise they must already be
            tokenized (words separated by whitespace; pycocoevalcap splits on whitespace only).
        n: highest n-gram order (pycocoevalcap default 4).
        sigma: standard deviation of the Gaussian length penalty (pycocoevalcap default 6).

    Returns:
        ``(corpus_score, per_image_scores)``: the mean of the per-image scores, and the per-image scores in
        the key order of `candidates`. Scores are on pycocoevalcap's scale (x10; 1.0 is often shown as 100).

    Document frequencies come from the reference sets of *this* corpus, so a score depends on the other
    images scored with it, and a one-image corpus always scores 0 (idf = log(1) - log(1)).
    """
    _, cands, refs = _prepare(candidates, references, tokenize)
    cand_counts = [_ngram_counts(c.split(), n) for c in cands]
    ref_counts = [[_ngram_counts(r.split(), n) for r in image_refs] for image_refs in refs]

    # df(g) = number of images whose reference set contains g anywhere (not number of references).
    doc_freq: Counter[NGram] = Counter()
    for image_refs in ref_counts:
        doc_freq.update(set().union(*image_refs))
    log_num_images = math.log(float(len(ref_counts)))

    scores: list[float] = []
    for counts, image_refs in zip(cand_counts, ref_counts):
        vec, norm, length = _tfidf(counts, doc_freq, log_num_images, n)
        per_order = [0.0] * n
        for ref in image_refs:
            ref_vec, ref_norm, ref_length = _tfidf(ref, doc_freq, log_num_images, n)
            penalty = math.exp(-(float(length - ref_length) ** 2) / (2 * sigma**2))
            for k in range(n):
                # The "-D" clipping: a candidate n-gram's weight counts only up to the reference's weight,
                # so repeating a matching word does not raise the score.
                dot = 0.0
                for ngram, weight in vec[k].items():
                    ref_weight = ref_vec[k].get(ngram, 0.0)
                    dot += min(weight, ref_weight) * ref_weight
                if norm[k] != 0 and ref_norm[k] != 0:
                    dot /= norm[k] * ref_norm[k]
                per_order[k] += dot * penalty
        # Mean over orders, mean over references, times 10 -- in pycocoevalcap's order of operations.
        scores.append(sum(per_order) / n / len(image_refs) * 10.0)
    return sum(scores) / len(scores), scores


# --------------------------------------------------------------------------------------------------------
# BLEU
# --------------------------------------------------------------------------------------------------------


def _bleu_from_stats(
    correct: Sequence[float], guess: Sequence[float], testlen: float, reflen: float
) -> list[float]:
    """Cumulative BLEU-1..n from clipped match counts, candidate n-gram counts and lengths (pycocoevalcap math)."""
    scores: list[float] = []
    product = 1.0
    for k in range(len(correct)):
        product *= (float(correct[k]) + _BLEU_TINY) / (float(guess[k]) + _BLEU_SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (testlen + _BLEU_TINY) / (reflen + _BLEU_SMALL)
    if ratio < 1:
        # Brevity penalty; an empty candidate gets exp(-huge) == 0.0.
        brevity = math.exp(1 - 1 / ratio)
        scores = [s * brevity for s in scores]
    return scores


def bleu_all(
    candidates: Mapping[K, str],
    references: Mapping[K, Sequence[str]],
    n: int = 4,
    *,
    tokenize: bool = False,
) -> tuple[list[float], list[list[float]]]:
    """Corpus BLEU-1..n and per-image BLEU-1..n, as pycocoevalcap's ``Bleu(n).compute_score``.

    Uses pycocoevalcap's "closest" effective reference length (ties go to the shorter reference) and its
    1e-15 / 1e-9 smoothing. Returns ``(corpus, per_image)`` where ``corpus[k]`` is BLEU-(k+1) of the corpus
    and ``per_image[k][i]`` is BLEU-(k+1) of image i, images in the key order of `candidates`. The corpus
    score pools matches and lengths over images; it is not the mean of the per-image scores.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _, cands, refs = _prepare(candidates, references, tokenize)
    total_correct = [0] * n
    total_guess = [0] * n
    total_testlen = 0
    total_reflen = 0
    per_image: list[list[float]] = [[] for _ in range(n)]
    for cand, image_refs in zip(cands, refs):
        words = cand.split()
        testlen = len(words)
        # Clip each candidate n-gram count by its maximum count in any single reference.
        max_ref_counts: dict[NGram, int] = {}
        ref_lens: list[int] = []
        for ref in image_refs:
            ref_words = ref.split()
            ref_lens.append(len(ref_words))
            for ngram, count in _ngram_counts(ref_words, n).items():
                max_ref_counts[ngram] = max(max_ref_counts.get(ngram, 0), count)
        reflen = min(ref_lens, key=lambda length: (abs(length - testlen), length))

        guess = [max(0, testlen - k) for k in range(n)]
        correct = [0] * n
        for ngram, count in _ngram_counts(words, n).items():
            correct[len(ngram) - 1] += min(max_ref_counts.get(ngram, 0), count)

        for k, score in enumerate(_bleu_from_stats(correct, guess, testlen, reflen)):
            per_image[k].append(score)
        total_testlen += testlen
        total_reflen += reflen
        for k in range(n):
            total_correct[k] += correct[k]
            total_guess[k] += guess[k]

    corpus = _bleu_from_stats(total_correct, total_guess, total_testlen, total_reflen)
    return corpus, per_image


def bleu(
    candidates: Mapping[K, str],
    references: Mapping[K, Sequence[str]],
    n: int = 4,
    *,
    tokenize: bool = False,
) -> tuple[float, list[float]]:
    """Corpus BLEU-n and per-image BLEU-n (pycocoevalcap's ``Bleu``); see :func:`bleu_all` for all orders.

    BLEU-n is cumulative (geometric mean of the 1..n precisions), so ``bleu(..., n=2)`` equals the BLEU-2
    entry of pycocoevalcap's ``Bleu(4)``.
    """
    corpus, per_image = bleu_all(candidates, references, n, tokenize=tokenize)
    return corpus[-1], per_image[-1]


# --------------------------------------------------------------------------------------------------------
# Convenience
# --------------------------------------------------------------------------------------------------------


def caption_scores(
    candidates: Sequence[str], references: Sequence[Sequence[str]], *, tokenize: bool = True
) -> dict[str, float]:
    """Corpus CIDEr-D and BLEU-1..4 for parallel lists: ``candidates[i]`` is scored against ``references[i]``.

    Captions go through :func:`simple_tokenize` unless `tokenize` is False. Returns
    ``{"cider": ..., "bleu1": ..., "bleu2": ..., "bleu3": ..., "bleu4": ...}`` (pycocoevalcap scale:
    CIDEr-D around 1.0 for good captions, BLEU in [0, 1]).
    """
    if isinstance(candidates, str) or isinstance(references, str):
        raise TypeError("candidates must be a list of str and references a list of lists of str")
    if len(candidates) != len(references):
        raise ValueError(f"got {len(candidates)} candidates but {len(references)} reference lists")
    # Validate and tokenize once here rather than once per metric.
    _, cand_list, ref_lists = _prepare(dict(enumerate(candidates)), dict(enumerate(references)), tokenize)
    cands, refs = dict(enumerate(cand_list)), dict(enumerate(ref_lists))
    cider, _ = cider_d(cands, refs)
    bleus, _ = bleu_all(cands, refs, 4)
    return {"cider": cider, **{f"bleu{k + 1}": score for k, score in enumerate(bleus)}}
