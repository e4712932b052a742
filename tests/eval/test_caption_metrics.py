"""CIDEr-D / BLEU must reproduce pycocoevalcap's numbers; the tokenizer must approximate its PTB step."""

from __future__ import annotations

import math

import pytest

from genlip_lit.eval.caption_metrics import bleu, bleu_all, caption_scores, cider_d, simple_tokenize

# Already tokenized (lowercase, space-separated, no punctuation), so pycocoevalcap needs no Java tokenizer.
# Covers: an exact match ("surf"), clipped repeats ("dogs"), partial overlaps, a one-word candidate ("cat"),
# an empty candidate ("kitchen"), a clitic token ("'s"), and 2-5 references per image.
REFERENCES = {
    "surf": [
        "a man riding a wave on top of a surfboard",
        "a surfer riding a large wave in the ocean",
        "a person on a surfboard riding a wave",
    ],
    "dogs": [
        "two dogs playing with a frisbee in the grass",
        "a couple of dogs running on a green field",
        "dogs chasing a frisbee on the lawn",
        "two brown dogs play in a park",
    ],
    "food": [
        "a plate of food with broccoli and rice",
        "a white plate topped with rice and vegetables",
    ],
    "bus": [
        "a red double decker bus driving down a street",
        "a bus is parked on the side of the road",
        "a large red bus on a city street",
        "a tour bus driving down the street",
        "a double decker bus on a busy road",
    ],
    "cat": [
        "a cat sitting on a man 's laptop keyboard",
        "a cat laying on top of a computer keyboard",
        "a black cat on a laptop",
    ],
    "kitchen": [
        "a kitchen with a stove and a refrigerator",
        "a small kitchen with white cabinets",
    ],
}
CANDIDATES = {
    "surf": "a man riding a wave on top of a surfboard",
    "dogs": "two dogs dogs dogs playing in the grass",
    "food": "a plate of rice and broccoli with food on a table",
    "bus": "a red bus on the street",
    "cat": "cat",
    "kitchen": "",
}

# Reference values computed once with the real scorers from pycocoevalcap 1.2 (pip, Python 3.11, numpy 2)
# in a scratch venv, never imported by the project:
#   gts = {k: list(v) for k, v in REFERENCES.items()}; res = {k: [CANDIDATES[k]] for k in REFERENCES}
#   Cider().compute_score(gts, res); Bleu(4).compute_score(gts, res)   # Bleu uses option="closest"
# Per-image lists are in the key order above.
PYCOCO_CIDER = 1.7497648086223558
PYCOCO_CIDER_PER_IMAGE = [
    4.950300040048699,
    1.056231811364785,
    2.0922041529973403,
    1.7530389128586734,
    0.6468139344646372,
    0.0,
]
PYCOCO_BLEU = [0.6895238746956113, 0.6115732934060915, 0.4959889717256094, 0.41525903926058005]
PYCOCO_BLEU_PER_IMAGE = [
    [
        0.9999999998000004,
        0.7499999999062501,
        0.7272727272066117,
        0.8464817246084536,
        0.0067379469856096216,
        0.0,
    ],
    [
        0.9999999997944449,
        0.6546536706203004,
        0.46709936645232714,
        0.8464817245943457,
        6.737946988978591e-06,
        0.0,
    ],
    [
        0.9999999997879634,
        0.41491326662302536,
        0.2894178740186102,
        0.5332500715720155,
        6.737946990101585e-07,
        0.0,
    ],
    [
        0.9999999997802583,
        6.147881528537401e-05,
        4.172261448166098e-05,
        8.087648624525816e-05,
        2.1307259243972606e-07,
        0.0,
    ],
]

# Raw versions of the fixture. pycocoevalcap's own PTBTokenizer (Stanford CoreNLP 3.4.1 via Java, plus its
# punctuation removal) turns these into exactly the token strings above (checked once alongside the values
# above), so the official pipeline on this raw text gives the same numbers.
RAW_REFERENCES = [
    [
        "A man riding a wave on top of a surfboard.",
        "A surfer riding a large wave in the ocean.",
        "A person on a surfboard, riding a wave!",
    ],
    [
        "Two dogs playing with a frisbee in the grass.",
        "A couple of dogs running on a green field.",
        "Dogs chasing a Frisbee on the lawn...",
        "Two brown dogs play in a park.",
    ],
    ["A plate of food with broccoli and rice.", "A white plate topped with rice and vegetables."],
    [
        "A red double decker bus driving down a street.",
        "A bus is parked on the side of the road.",
        "A large, red bus on a city street.",
        "A tour bus driving down the street.",
        "A double decker bus on a busy road.",
    ],
    [
        "A cat sitting on a man's laptop keyboard.",
        "A cat laying on top of a computer keyboard.",
        "A black cat on a laptop.",
    ],
    ["A kitchen with a stove and a refrigerator.", "A small kitchen with white cabinets."],
]
RAW_CANDIDATES = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs, dogs, dogs playing in the grass!",
    'A plate of rice and broccoli with "food" on a table.',
    "A red bus on the street.",
    "Cat.",
    "",
]

TOL = 1e-6


def test_cider_d_matches_pycocoevalcap():
    score, per_image = cider_d(CANDIDATES, REFERENCES)
    assert score == pytest.approx(PYCOCO_CIDER, abs=TOL)
    assert per_image == pytest.approx(PYCOCO_CIDER_PER_IMAGE, abs=TOL)


def test_bleu_matches_pycocoevalcap():
    corpus, per_image = bleu_all(CANDIDATES, REFERENCES)
    assert corpus == pytest.approx(PYCOCO_BLEU, abs=TOL)
    for k in range(4):
        assert per_image[k] == pytest.approx(PYCOCO_BLEU_PER_IMAGE[k], abs=TOL)
    # BLEU-n is cumulative, so asking for a lower order gives the same number as that entry of Bleu(4).
    for n in range(1, 5):
        score, scores = bleu(CANDIDATES, REFERENCES, n=n)
        assert score == pytest.approx(PYCOCO_BLEU[n - 1], abs=TOL)
        assert scores == pytest.approx(PYCOCO_BLEU_PER_IMAGE[n - 1], abs=TOL)


def test_caption_scores_on_raw_text_match_pycocoevalcap():
    scores = caption_scores(RAW_CANDIDATES, RAW_REFERENCES)
    assert set(scores) == {"cider", "bleu1", "bleu2", "bleu3", "bleu4"}
    assert scores["cider"] == pytest.approx(PYCOCO_CIDER, abs=TOL)
    for k in range(4):
        assert scores[f"bleu{k + 1}"] == pytest.approx(PYCOCO_BLEU[k], abs=TOL)
    # The dict-based metrics take the same flag.
    raw_cands = dict(zip(CANDIDATES, RAW_CANDIDATES))
    raw_refs = dict(zip(REFERENCES, RAW_REFERENCES))
    assert cider_d(raw_cands, raw_refs, tokenize=True)[0] == pytest.approx(PYCOCO_CIDER, abs=TOL)
    assert bleu(raw_cands, raw_refs, tokenize=True)[0] == pytest.approx(PYCOCO_BLEU[3], abs=TOL)


def test_identical_candidate_and_reference_gives_bleu4_of_one():
    refs = {i: [caption] for i, caption in enumerate(REFERENCES["bus"])}
    cands = {i: r[0] for i, r in refs.items()}
    score, per_image = bleu(cands, refs)
    assert score == pytest.approx(1.0, abs=TOL)
    assert per_image == pytest.approx([1.0] * len(cands), abs=TOL)


def test_cider_is_invariant_to_candidate_order():
    score, per_image = cider_d(CANDIDATES, REFERENCES)
    by_key = dict(zip(CANDIDATES, per_image))
    reversed_cands = dict(reversed(list(CANDIDATES.items())))
    rev_score, rev_per_image = cider_d(reversed_cands, REFERENCES)
    assert rev_score == pytest.approx(score, abs=1e-12)
    # Per-image scores follow the key order of `candidates`.
    assert rev_per_image == pytest.approx([by_key[k] for k in reversed_cands], abs=1e-12)
    # Shuffling each image's references does not matter either.
    shuffled_refs = {k: list(reversed(v)) for k, v in REFERENCES.items()}
    assert cider_d(CANDIDATES, shuffled_refs)[0] == pytest.approx(score, abs=1e-12)


def test_empty_candidate_scores_zero():
    cands = dict(CANDIDATES, dogs="")
    _, cider_per_image = cider_d(cands, REFERENCES)
    _, bleu_per_image = bleu_all(cands, REFERENCES)
    keys = list(cands)
    for key in ("dogs", "kitchen"):
        assert cider_per_image[keys.index(key)] == 0.0
        assert all(per_image[keys.index(key)] == 0.0 for per_image in bleu_per_image)
    # A whole corpus of empty candidates scores 0 on both metrics.
    empty = {k: "" for k in REFERENCES}
    assert cider_d(empty, REFERENCES)[0] == 0.0
    assert bleu(empty, REFERENCES)[0] == 0.0


def test_cider_clips_repeated_ngrams_and_single_image_corpus_scores_zero():
    refs = {"a": ["a dog on the grass"], "b": ["a cat on a sofa"]}
    once, _ = cider_d({"a": "dog grass", "b": "a cat"}, refs)
    repeated, _ = cider_d({"a": "dog dog dog grass", "b": "a cat"}, refs)
    assert repeated < once
    # idf = log(N) - log(df) is 0 for every reference n-gram when N = 1.
    assert cider_d({"x": "a dog"}, {"x": ["a dog"]}) == (0.0, [0.0])


def test_input_validation():
    with pytest.raises(ValueError, match="same keys"):
        cider_d({"a": "x"}, {"b": ["x"]})
    with pytest.raises(ValueError, match="empty corpus"):
        bleu({}, {})
    with pytest.raises(ValueError, match="empty"):
        cider_d({"a": "x"}, {"a": []})
    with pytest.raises(TypeError, match="list of str"):
        cider_d({"a": "x"}, {"a": "x"})
    with pytest.raises(TypeError, match="must be a str"):
        bleu({"a": ["x"]}, {"a": ["x"]})
    with pytest.raises(ValueError, match="2 candidates"):
        caption_scores(["a", "b"], [["a"]])


@pytest.mark.parametrize(
    ("raw", "tokens"),
    [
        # Expected outputs are what pycocoevalcap's PTBTokenizer (CoreNLP 3.4.1 + punctuation removal)
        # produces for these inputs (checked once with Java).
        ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
        ("A dog's toy, on the floor!", "a dog 's toy on the floor"),
        (
            "It's a man who'll go, they're here, I'm ok, we've been, he'd say.",
            "it 's a man who 'll go they 're here i 'm ok we 've been he 'd say",
        ),
        ("Can't won't isn't cannot gonna", "ca n't wo n't is n't can not gon na"),
        ('A sign that reads "STOP".', "a sign that reads stop"),
        (
            "A black-and-white photo - of a 3.5 inch tall man at 3:30 p.m. in the U.S.",
            "a black-and-white photo of a 3.5 inch tall man at 3:30 p.m. in the u.s.",
        ),
        ("A 1,000 piece puzzle; e.g. toys etc.", "a 1,000 piece puzzle e.g. toys etc."),
        ("Mr. Smith's dog at St. Mary's Church.", "mr. smith 's dog at st. mary 's church"),
        ("People walking down a street.  There are cars.", "people walking down a street there are cars"),
        ("'Quoted' words and `backticks' here -- dash", "quoted words and backticks here dash"),
        ("A cake that costs $5 and 10% off & more/less.", "a cake that costs $ 5 and 10 % off & more/less"),
        ("the dogs' toys at 5 o'clock", "the dogs toys at 5 o'clock"),
        ("eating food:rice, beans ;fish", "eating food rice beans fish"),
        ("dogs.cats hello...world a--b", "dogs.cats hello world a b"),
        ("The dog\u2019s \u201cball\u201d here.", "the dog 's ball here"),
        # Beyond PTB+pycocoevalcap, which would keep "-lrb-"/"-rrb-" and "!!" (see the module docstring).
        ("Wow!! A (very) big dog?!", "wow a very big dog"),
        ("  \n ", ""),
    ],
)
def test_simple_tokenize(raw: str, tokens: str):
    assert simple_tokenize(raw) == tokens
    # Idempotent: tokenized text passes through unchanged, so tokenize=True on clean text is harmless.
    assert simple_tokenize(tokens) == tokens


def test_scores_are_finite_and_in_range():
    scores = caption_scores(RAW_CANDIDATES, RAW_REFERENCES)
    assert all(math.isfinite(v) for v in scores.values())
    assert all(0.0 <= scores[f"bleu{k}"] <= 1.0 for k in range(1, 5))
    assert scores["bleu1"] >= scores["bleu2"] >= scores["bleu3"] >= scores["bleu4"]
