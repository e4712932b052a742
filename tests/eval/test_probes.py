"""Frozen-feature probes: extraction contract (eval, no_grad, budget, mode restore) and probe accuracy on
features whose class information is known by construction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genlip_lit.errors import GenLIPUserError
from genlip_lit.eval.probes import (
    ProbeResult,
    attentive_probe,
    extract_features,
    linear_probe,
    run_probes,
    stratified_split,
)

C, D, M = 4, 32, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _features(n: int, seed: int, random_labels: bool = False, cancel_in_mean: bool = False):
    """Patches [n, M, D] of noise; 2 random patches per sample carry a shared 'object' marker + the class mean.

    With `cancel_in_mean`, 2 other (unmarked) patches carry minus the class mean, so the patch mean holds no
    class information at all while the marked patches still do.
    """
    means = torch.randn(C, D, generator=torch.Generator().manual_seed(123)) * 1.5
    marker = torch.randn(D, generator=torch.Generator().manual_seed(456)) * 2.0
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    x = torch.randn(n, M, D, generator=g)
    pos = torch.stack([torch.randperm(M, generator=g)[:4] for _ in range(n)])
    rows = torch.arange(n)
    for k in range(2):
        x[rows, pos[:, k]] += marker + means[y]
        if cancel_in_mean:
            x[rows, pos[:, k + 2]] -= means[y]
    if random_labels:
        y = torch.randint(0, C, (n,), generator=g)
    return x, y


@pytest.fixture(scope="module")
def separable():
    return _features(400, 1), _features(200, 2)


def test_separable_features_probe_near_perfectly(separable) -> None:
    (trp, try_), (tep, tey) = separable
    lin = linear_probe(trp.mean(1), try_, tep.mean(1), tey, C)
    att = attentive_probe(trp, try_, tep, tey, C)
    assert lin.top1 >= 0.95 and att.top1 >= 0.95, (lin, att)
    assert (lin.num_train, lin.num_test, lin.num_classes) == (400, 200, C)
    assert lin.hparams["weight_decay"] in (1e-4, 1e-3, 1e-2, 1e-1)
    assert set(lin.hparams["val_top1_by_weight_decay"]) == {"0.0001", "0.001", "0.01", "0.1"}
    assert att.hparams["num_heads"] == 8 and att.seconds > 0 and att.train_top1 is not None


def test_attentive_probe_finds_evidence_that_mean_pooling_cancels() -> None:
    (trp, try_), (tep, tey) = _features(400, 3, cancel_in_mean=True), _features(200, 4, cancel_in_mean=True)
    lin = linear_probe(trp.mean(1), try_, tep.mean(1), tey, C)
    att = attentive_probe(trp, try_, tep, tey, C)
    assert lin.top1 < 0.25 + 0.15 and att.top1 >= 0.9, (lin.top1, att.top1)


def test_random_labels_stay_near_chance() -> None:
    (trp, try_), (tep, tey) = _features(400, 5, random_labels=True), _features(200, 6, random_labels=True)
    lin = linear_probe(trp.mean(1), try_, tep.mean(1), tey, C)
    att = attentive_probe(trp, try_, tep, tey, C)
    assert lin.chance == 0.25
    assert abs(lin.top1 - 0.25) <= 0.15 and abs(att.top1 - 0.25) <= 0.15, (lin.top1, att.top1)


def test_probes_are_deterministic_and_leave_the_global_rng_alone(separable) -> None:
    (trp, try_), (tep, tey) = separable
    trp, tep = trp[:120], tep[:80]  # deterministic on any size; smaller is faster
    try_, tey = try_[:120], tey[:80]
    # a little noise on the labels so top-1 is not trivially 1.0 for every run
    try_ = torch.where(torch.arange(120) % 7 == 0, (try_ + 1) % C, try_)
    rng = torch.get_rng_state()
    runs = [
        (linear_probe(trp.mean(1), try_, tep.mean(1), tey, C), attentive_probe(trp, try_, tep, tey, C, epochs=5))
        for _ in range(2)
    ]
    assert torch.equal(rng, torch.get_rng_state())
    (l1, a1), (l2, a2) = runs
    assert (l1.top1, l1.hparams, l1.train_top1) == (l2.top1, l2.hparams, l2.train_top1)
    assert (a1.top1, a1.train_top1) == (a2.top1, a2.train_top1)
    other = attentive_probe(trp, try_, tep, tey, C, epochs=5, seed=1)
    assert other.hparams["seed"] == 1


def test_probe_input_checks() -> None:
    x, y = torch.randn(10, D), torch.randint(0, C, (10,))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        linear_probe(x, y, x, torch.full((10,), 4), C)
    with pytest.raises(ValueError, match="labels for"):
        linear_probe(x, y[:5], x, y, C)
    with pytest.raises(ValueError, match=r"\[N, M, D\]"):
        attentive_probe(x, y, x, y, C)


def test_stratified_split_holds_out_every_class_in_proportion() -> None:
    labels = [0] * 10 + [1] * 20 + [2] * 2 + [3]
    keep, held = stratified_split(labels, 0.2, seed=0)
    assert sorted([*keep, *held]) == list(range(len(labels)))
    counts = {c: sum(labels[i] == c for i in held) for c in range(4)}
    assert counts == {0: 2, 1: 4, 2: 1, 3: 0}  # a pair gives one, a singleton stays in keep
    again = stratified_split(labels, 0.2, seed=0)
    assert all((a == b).all() for a, b in zip((keep, held), again))
    assert not (stratified_split(labels, 0.2, seed=1)[1] == held).all()


# ---------------------------------------------------------------------------------------------- extraction
class TinyEncoder(nn.Module):
    """encode_patches = conv patch embed (8 px patches) + dropout, so train mode would change the output."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 8, 8)
        self.drop = nn.Dropout(0.5)
        self.seen = 0
        self.modes: list[bool] = []
        self.grad_enabled: list[bool] = []

    def encode_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.seen += pixel_values.shape[0]
        self.modes.append(self.training)
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.drop(self.proj(pixel_values).flatten(2).transpose(1, 2))


class FirstPatchPooling(TinyEncoder):
    def encode_pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encode_patches(pixel_values)[:, 0]


def _image_batches(num_batches: int, batch_size: int = 4, consumed: list | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for i in range(num_batches):
        if consumed is not None:
            consumed.append(i)
        yield torch.randn(batch_size, 3, 32, 32, generator=g), torch.randint(0, C, (batch_size,), generator=g)


def test_extract_features_eval_no_grad_budget_and_mode_restore() -> None:
    torch.manual_seed(0)
    enc = TinyEncoder().train()
    enc.proj.eval()  # a mixed-mode module: each submodule must get ITS mode back, not one flag for all
    consumed: list[int] = []
    feats, labels = extract_features(enc, _image_batches(5, consumed=consumed), budget=10)
    assert feats.shape == (10, 16, 16) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert labels.shape == (10,) and labels.dtype == torch.long
    assert not feats.requires_grad and enc.proj.weight.requires_grad
    assert enc.seen == 10 and consumed == [0, 1, 2]  # budget cut the third batch and stopped pulling batches
    assert enc.modes == [False] * 3 and enc.grad_enabled == [False] * 3
    assert (enc.training, enc.proj.training, enc.drop.training) == (True, False, True)
    again, _ = extract_features(enc, _image_batches(5), budget=10)
    assert torch.equal(feats, again)  # eval mode: dropout off
    expected = torch.cat([y for _, y in _image_batches(3)])[:10]
    assert torch.equal(labels, expected)


def test_extract_features_pooled_unlabelled_and_limits() -> None:
    enc = TinyEncoder()
    patches, _ = extract_features(enc, _image_batches(2))
    pooled, _ = extract_features(enc, _image_batches(2), pooled=True)
    assert pooled.shape == (8, 16)
    torch.testing.assert_close(pooled, patches.mean(1))
    first, _ = extract_features(FirstPatchPooling(), _image_batches(2), pooled=True)
    assert first.shape == (8, 16)
    # -1 = unlabelled: dropped before encoding
    x, y = next(_image_batches(1))
    y[1] = -1
    feats, labels = extract_features(enc, [{"pixel_values": x, "labels": y}])
    assert feats.shape[0] == 3 and labels.tolist() == [y[0], y[2], y[3]]
    with pytest.raises(GenLIPUserError, match="pooled=True"):
        extract_features(enc, _image_batches(2), max_bytes=1000)
    with pytest.raises(ValueError, match="uint8"):
        extract_features(enc, [(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2))])
    with pytest.raises(GenLIPUserError, match="no labelled samples"):
        extract_features(enc, [])


def test_run_probes_extracts_once_and_reports_both() -> None:
    torch.manual_seed(0)
    enc = TinyEncoder()
    results = run_probes(
        enc, _image_batches(6), _image_batches(3, seed=1), C, budget=20, attentive_kwargs={"epochs": 2}
    )
    assert set(results) == {"majority", "linear", "attentive"}
    assert enc.seen == 20 + 12  # one pass per split: the pooled vector is the patch mean, not a second pass
    for r in results.values():
        assert isinstance(r, ProbeResult) and 0.0 <= r.top1 <= 1.0
        assert (r.num_train, r.num_test, r.num_classes) == (20, 12, C)
        assert r.to_dict()["top1"] == r.top1


def test_majority_class_and_the_table_floors() -> None:
    from genlip_lit.eval.probes import majority_class, probe_table

    train_y = torch.tensor([2, 2, 2, 0, 1, 1])
    test_y = torch.tensor([2, 0, 2, 1, 1, 1, 1, 2])
    majority = majority_class(train_y, test_y, 4)
    assert majority.top1 == 3 / 8 and majority.hparams == {"class": 2, "train_share": 0.5}
    assert majority_class(torch.tensor([1, 0, 0, 1]), test_y, 4).hparams["class"] == 0  # a tie: the lower id
    linear = ProbeResult(0.625, 6, 8, 4)
    header, shown, raw = probe_table({"linear": linear, "majority": majority}, ["a", "b", "c", "d"])
    assert shown == [["encoder", "62.5%", "-"], ["majority class (c)", "37.5%", "37.5%"],
                     ["uniform chance (1/4)", "25.0%", "25.0%"]]
    assert raw[1:] == [["majority class (c)", 0.375, 0.375], ["uniform chance (1/4)", 0.25, 0.25]]
