"""Losses and class-balanced weights against numbers worked out by hand."""

import math

import pytest
import torch

from bench.config import LossConfig
from bench.data.profiles import class_counts
from bench.methods.losses import cb_weights, ldam_margins, make_loss

# Two samples, two classes. Sample a: logits [0, ln 3] -> p = [1/4, 3/4], label 1.
# Sample b: logits [0, 0] -> p = [1/2, 1/2], label 0.
LOGITS = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
Y = torch.tensor([1, 0])
CE_A, CE_B = -math.log(3 / 4), math.log(2.0)
# counts [2, 1], beta 0.5: raw (1-b)/(1-b^n) = [0.5/0.75, 0.5/0.5] = [2/3, 1], sum 5/3, times C=2/sum -> [0.8, 1.2]
COUNTS = [2, 1]
W0, W1 = 0.8, 1.2


def loss(name: str, counts=COUNTS, **kw):
    return make_loss(LossConfig(name=name, **kw), counts)


def test_cb_weights_two_class_by_hand():
    w = cb_weights(COUNTS, 0.5)
    assert w.dtype == torch.float32
    assert torch.allclose(w, torch.tensor([W0, W1]), atol=1e-7)
    assert torch.equal(cb_weights([5, 1, 7], 0.0), torch.ones(3))            # beta 0: all ones
    # beta 1: the limit 1/n_c, normalised to sum C: [1/2, 1] * 2 / 1.5 = [2/3, 4/3]
    assert torch.allclose(cb_weights(COUNTS, 1.0), torch.tensor([2 / 3, 4 / 3]), atol=1e-7)
    assert torch.allclose(cb_weights(COUNTS, 1 - 1e-12), torch.tensor([2 / 3, 4 / 3]), atol=1e-4)


def test_cb_weights_cifar100_lt_if100():
    counts = class_counts(100, 500, 100)
    assert counts[0] == 500 and counts[-1] == 5
    w = cb_weights(counts, 0.9999)
    assert abs(float(w.sum()) - 100) < 1e-3
    assert abs(float(w[0]) - 0.045) < 1e-3                                     # hand-computed: head ~0.045
    assert abs(float(w[-1]) - 4.38) < 5e-3                                     # tail ~4.38
    # first principles: tail / head = (1 - b^500) / (1 - b^5)
    b = 0.9999
    assert float(w[-1] / w[0]) == pytest.approx((1 - b ** 500) / (1 - b ** 5), rel=1e-5)


def test_ce_and_cb_ce():
    assert float(loss("ce")(LOGITS, Y)) == pytest.approx((CE_A + CE_B) / 2, rel=1e-6)
    # one sample of each class: sum_i w_yi = 0.8 + 1.2 = 2 = B, so both normalisers agree on this batch
    expected = (W1 * CE_A + W0 * CE_B) / 2
    for norm in ("batch", "weights"):
        assert float(loss("cb_ce", cb_beta=0.5, cb_normalizer=norm)(LOGITS, Y)) == pytest.approx(expected, rel=1e-6)


# Three samples, where sum_i w_yi (1.2 + 0.8 + 0.8 = 2.8) differs from B = 3:
#   a: logits [0, ln 3], label 1 (w 1.2): p_1 = 3/4, CE = ln(4/3) = 0.28768207245178085
#   b: logits [0, 0],    label 0 (w 0.8): p_0 = 1/2, CE = ln 2   = 0.6931471805599453
#   c: logits [ln 3, 0], label 0 (w 0.8): p_0 = 3/4, CE = ln(4/3)
# sum_i w_yi CE_i = 1.2 * 0.287682... + 0.8 * 0.693147... + 0.8 * 0.287682... = 1.129881889351518
LOGITS3 = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0], [math.log(3.0), 0.0]])
Y3 = torch.tensor([1, 0, 0])
CB_BATCH3 = 0.37662729645050597      # 1.129881889351518 / 3   (WB / HS codes: the plain batch mean)
CB_WEIGHTS3 = 0.4035292461969707     # 1.129881889351518 / 2.8 (PyTorch weight=: sum_i w_yi)


@pytest.mark.parametrize("norm, expected, z", [("batch", CB_BATCH3, 3.0), ("weights", CB_WEIGHTS3, 2.8)])
def test_cb_ce_normalizers_by_hand(norm, expected, z):
    f = loss("cb_ce", cb_beta=0.5, cb_normalizer=norm)
    assert float(f(LOGITS3, Y3)) == pytest.approx(expected, rel=1e-6)
    assert float(f.normalizer(Y3)) == pytest.approx(z, rel=1e-7)
    # the same reduction for a loss with its own per-sample form (focal, gamma 0 = CE) under DRW
    g = loss("focal", focal_gamma=0.0, cb_beta=0.5, drw_epoch=0, cb_normalizer=norm)
    assert float(g(LOGITS3, Y3)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("norm, shares", [
    # rank 0 holds sample a, rank 1 samples b and c. batch: normalizers 1 and 2 of 3; rank losses
    # 1.2 * 0.287682 / 1 = 0.345218486942137 and (0.8 * 0.693147 + 0.8 * 0.287682) / 2 = 0.39233170120469046
    ("batch", [(0.345218486942137, 1.0), (0.39233170120469046, 2.0)]),
    # weights: normalizers 1.2 and 1.6 of 2.8; rank losses 0.28768207245178085 and 0.49041462650586304
    ("weights", [(0.28768207245178085, 1.2), (0.49041462650586304, 1.6)]),
])
def test_ddp_rank_shares_recombine_the_global_loss(norm, shares):
    """The DDP loop weighs rank r's loss by z_r / Z (times the world size, undone by DDP's average)."""
    f = loss("cb_ce", cb_beta=0.5, cb_normalizer=norm)
    parts = [slice(0, 1), slice(1, 3)]
    for s, (rank_loss, z) in zip(parts, shares):
        assert float(f(LOGITS3[s], Y3[s])) == pytest.approx(rank_loss, rel=1e-6)
        assert float(f.normalizer(Y3[s])) == pytest.approx(z, rel=1e-7)
    total_z = sum(z for _, z in shares)
    combined = sum(rank_loss * z / total_z for rank_loss, z in shares)
    assert combined == pytest.approx(CB_BATCH3 if norm == "batch" else CB_WEIGHTS3, rel=1e-12)


def test_cb_bce_softmax_takes_only_the_batch_normalizer():
    with pytest.raises(ValueError, match="cb_normalizer: cb_bce_softmax averages over its B\\*C entries"):
        loss("cb_bce_softmax", cb_beta=0.5, cb_normalizer="weights")
    assert float(loss("cb_bce_softmax", cb_beta=0.5).normalizer(Y3)) == 3.0


def test_cb_bce_softmax_by_hand_and_loop():
    got = float(loss("cb_bce_softmax", cb_beta=0.5)(LOGITS, Y))
    # a: p = [1/4, 3/4], target [0, 1]: -log(1 - 1/4) - log(3/4); b: p = [1/2, 1/2]: 2 * log 2; / (B*C = 4)
    hand = (W1 * 2 * -math.log(3 / 4) + W0 * 2 * math.log(2)) / 4
    assert got == pytest.approx(hand, rel=1e-6)

    # explicit loop on a random 3-class batch
    g = torch.Generator().manual_seed(0)
    z, y, counts = torch.randn(5, 3, generator=g), torch.tensor([0, 2, 1, 2, 0]), [50, 10, 2]
    beta = 0.9
    raw = [(1 - beta) / (1 - beta ** n) for n in counts]
    w = [r / sum(raw) * 3 for r in raw]
    total = 0.0
    for i in range(5):
        e = [math.exp(float(v)) for v in z[i]]
        p = [v / sum(e) for v in e]
        for c in range(3):
            t = 1.0 if c == int(y[i]) else 0.0
            total += -w[int(y[i])] * (t * math.log(p[c]) + (1 - t) * math.log(1 - p[c]))
    got = float(make_loss(LossConfig(name="cb_bce_softmax", cb_beta=beta), counts)(z, y))
    assert got == pytest.approx(total / 15, rel=1e-5)


def test_focal_by_hand():
    f = loss("focal", focal_gamma=2.0)
    # a: -(1 - 3/4)^2 log(3/4); b: -(1/2)^2 log(1/2)
    hand = ((1 / 4) ** 2 * CE_A + (1 / 2) ** 2 * CE_B) / 2
    assert float(f(LOGITS, Y)) == pytest.approx(hand, rel=1e-6)
    assert float(loss("focal", focal_gamma=0.0)(LOGITS, Y)) == pytest.approx((CE_A + CE_B) / 2, rel=1e-6)


def test_ldam_margins_and_loss():
    m = ldam_margins([100, 1], 0.5)
    # n^(-1/4) = [1/sqrt(10), 1], scaled so the max is 0.5
    assert torch.allclose(m, torch.tensor([0.5 / math.sqrt(10), 0.5]), atol=1e-7)
    f = make_loss(LossConfig(name="ldam", ldam_max_margin=0.5, ldam_scale=2.0), [100, 1])
    z, y = torch.zeros(2, 2), torch.tensor([0, 1])
    # sample 0: s*(z - m0 e0) = [-2 m0, 0] -> CE = log(1 + e^{2 m0}); sample 1: log(1 + e^{2*0.5})
    m0 = 0.5 / math.sqrt(10)
    hand = (math.log(1 + math.exp(2 * m0)) + math.log(1 + math.e)) / 2
    assert float(f(z, y)) == pytest.approx(hand, rel=1e-6)


def test_logit_adjusted_and_balanced_softmax():
    z, y = torch.zeros(1, 2), torch.tensor([0])
    # counts [3, 1]: pi = [3/4, 1/4]; tau 1: softmax(log pi) = pi -> -log 3/4
    assert float(make_loss(LossConfig(name="logit_adjusted", la_tau=1.0), [3, 1])(z, y)) == pytest.approx(
        -math.log(3 / 4), rel=1e-6)
    # tau 2: p0 = (9/16) / (9/16 + 1/16) = 0.9
    assert float(make_loss(LossConfig(name="logit_adjusted", la_tau=2.0), [3, 1])(z, y)) == pytest.approx(
        -math.log(0.9), rel=1e-6)
    # balanced softmax: logits + log n = [log 3, 0]; label 1 -> -log(1/4)
    bs = make_loss(LossConfig(name="balanced_softmax"), [3, 1])
    assert float(bs(z, torch.tensor([1]))) == pytest.approx(math.log(4), rel=1e-6)


def test_drw_switches_weights_by_epoch():
    unweighted = (CE_A + CE_B) / 2
    weighted = (W1 * CE_A + W0 * CE_B) / (W1 + W0)
    f = loss("ce", cb_beta=0.5, drw_epoch=2)
    assert "class_weight" in dict(f.named_buffers())
    assert float(f(LOGITS, Y)) == pytest.approx(unweighted, rel=1e-6)   # before any set_epoch: epoch 0
    f.set_epoch(1)
    assert float(f(LOGITS, Y)) == pytest.approx(unweighted, rel=1e-6)
    f.set_epoch(2)
    assert float(f(LOGITS, Y)) == pytest.approx(weighted, rel=1e-6)
    f.set_epoch(5)
    assert float(f(LOGITS, Y)) == pytest.approx(weighted, rel=1e-6)

    # the same switch for a loss with its own reduction: focal uses the weighted mean
    g = loss("focal", focal_gamma=2.0, cb_beta=0.5, drw_epoch=1)
    fa, fb = (1 / 4) ** 2 * CE_A, (1 / 2) ** 2 * CE_B
    g.set_epoch(0)
    assert float(g(LOGITS, Y)) == pytest.approx((fa + fb) / 2, rel=1e-6)
    g.set_epoch(1)
    assert float(g(LOGITS, Y)) == pytest.approx((W1 * fa + W0 * fb) / (W1 + W0), rel=1e-6)

    # cb losses under DRW: their CB weights are deferred, not applied twice
    h = loss("cb_bce_softmax", cb_beta=0.5, drw_epoch=3)
    h.set_epoch(0)
    assert float(h(LOGITS, Y)) == pytest.approx((2 * CE_A + 2 * CE_B) / 4, rel=1e-6)
    h.set_epoch(3)
    assert float(h(LOGITS, Y)) == pytest.approx((W1 * 2 * CE_A + W0 * 2 * CE_B) / 4, rel=1e-6)


def test_buffers_follow_dtype_and_bad_configs():
    f = loss("ldam", cb_beta=0.5, drw_epoch=0).to(torch.float64)
    assert f.class_weight.dtype == torch.float64 and f.margins.dtype == torch.float64
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss(LossConfig(name="nope"), COUNTS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label_smoothing"):
        loss("focal", label_smoothing=0.1)


def test_normalizer_is_what_the_batch_mean_divides_by():
    """DDP weighs a rank's loss by its share of the global normalizer; check it against the reductions."""
    from bench.config import LossConfig
    from bench.methods.losses import make_loss

    counts = [50, 20, 5]
    y = torch.tensor([0, 0, 1, 2])
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    ce = make_loss(LossConfig(name="ce"), counts)
    assert float(ce.normalizer(y)) == 4.0
    for norm in ("batch", "weights"):
        cb = make_loss(LossConfig(name="cb_ce", cb_beta=0.99, cb_normalizer=norm), counts)
        w = cb.class_weight.double()
        assert float(cb.normalizer(y)) == (4.0 if norm == "batch" else pytest.approx(float(2 * w[0] + w[1] + w[2])))
        # split the batch in two "ranks": sum_r loss_r * z_r / Z equals the loss of the whole batch
        parts = [(slice(0, 1), cb), (slice(1, 4), cb)]
        whole = cb(logits, y)
        combined = sum(loss(logits[s], y[s]) * loss.normalizer(y[s]) for s, loss in parts) / cb.normalizer(y)
        assert float(combined) == pytest.approx(float(whole), rel=1e-6)
    bce = make_loss(LossConfig(name="cb_bce_softmax", cb_beta=0.99), counts)
    assert float(bce.normalizer(y)) == 4.0
    combined = sum(bce(logits[s], y[s]) * bce.normalizer(y[s]) for s, _ in parts) / 4.0
    assert float(combined) == pytest.approx(float(bce(logits, y)), rel=1e-6)


def test_label_aware_smoothing_by_hand():
    """MiSLAS's eps_c for counts [100, 10, 1], eps .4 / .1: concave .1 + .3 sin(pi 9 / 198) = .1427 for the middle
    class; linear .1 + .3 * 9 / 99. Its per-sample loss (the code's form) on z = [2, 0, 0], y = 0:
    logp = z - log(e^2 + 2) = [-0.239545, -2.239545, -2.239545]; 0.6 * 0.239545 + 0.4 * mean(-logp) = 0.772878;
    on z = 0, y = 2 (eps .1): log 3 = 1.098612 either way; the batch mean 0.935745."""
    from bench.methods.losses import las_smoothing

    counts = [100, 10, 1]
    middle = 0.1 + 0.3 * math.sin(math.pi * 9 / 198)
    assert las_smoothing(counts, 0.4, 0.1).tolist() == pytest.approx([0.4, middle, 0.1])
    assert las_smoothing(counts, 0.4, 0.1)[1] == pytest.approx(0.1427, abs=1e-4)
    assert las_smoothing(counts, 0.4, 0.1, "linear").tolist() == pytest.approx([0.4, 0.1 + 0.3 * 9 / 99, 0.1])
    assert las_smoothing([5, 5], 0.4, 0.1).tolist() == pytest.approx([0.4, 0.4])
    loss = make_loss(LossConfig(name="las", las_head=0.4, las_tail=0.1), counts)
    z = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert float(loss(z[:1], torch.tensor([0]))) == pytest.approx(0.772878, abs=1e-6)
    assert float(loss(z, torch.tensor([0, 2]))) == pytest.approx(0.935745, abs=1e-6)
    # eps = 0 everywhere is cross-entropy
    ce = make_loss(LossConfig(name="las", las_head=0.0, las_tail=0.0), counts)
    assert float(ce(z, torch.tensor([0, 2]))) == pytest.approx(float(torch.nn.functional.cross_entropy(
        z, torch.tensor([0, 2]))), abs=1e-7)


# --- multi-expert losses (RIDE, SADE) --------------------------------------------------------------------------


def test_ride_with_one_expert_is_ldam_drw():
    """One expert: the ensemble is the expert, so the diversity KL is 0 and RIDE's s cos - s m_y is LDAM's
    s (cos - m_y), with DRW's weights switched on by the same epoch."""
    torch.manual_seed(0)
    cos = torch.rand(6, 3) * 2 - 1
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    counts = [50, 10, 2]
    from bench.methods.losses import RIDELoss

    ride = RIDELoss(counts, 0.5, 30.0, -0.45, 1.0, 0.05, cb_weights(counts, 0.9999), 2, "weights")
    ldam = loss("ldam", counts, ldam_scale=30.0, drw_epoch=2, cb_beta=0.9999, cb_normalizer="weights")
    for epoch in (0, 3):                                  # before and after DRW
        ride.set_epoch(epoch)
        ldam.set_epoch(epoch)
        z = (30.0 * cos)[:, None]
        assert torch.allclose(ride(z, y), ldam(cos, y), atol=1e-5)
        assert abs(float(ride.extra(z))) < 1e-6


def test_ride_diversity_term_by_hand():
    """Two experts, two classes, T = 1: lambda T^2 sum_k KL(p || q_k), p = softmax(mean z), a batch mean. From DRW's
    epoch the temperature is per class: counts [3, 1], a = 0.05: w = C pi a + 1 - a = [1.025, 0.975], T = w / max."""
    from bench.methods.losses import RIDELoss

    z = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])          # one sample: q_1 = [1/4, 3/4], q_2 = [1/2, 1/2]
    ride = RIDELoss([3, 1], 0.5, 30.0, -0.45, 1.0, 0.05, cb_weights([3, 1], 0.9999), 1, "weights")
    p = torch.softmax(z.mean(1), dim=1)[0]  # softmax([0, ln 3 / 2]) = [1, sqrt 3] / (1 + sqrt 3)
    assert torch.allclose(p, torch.tensor([1.0, math.sqrt(3)]) / (1 + math.sqrt(3)))
    kl = sum(float((p * (p.log() - torch.tensor(q).log())).sum()) for q in ([0.25, 0.75], [0.5, 0.5]))
    assert math.isclose(float(ride.extra(z)), -0.45 * kl, rel_tol=1e-5)
    assert torch.allclose(ride.temperature, torch.tensor([1.0, 0.975 / 1.025]))
    ride.set_epoch(1)                                                # class-wise temperatures from DRW's epoch on
    t = torch.tensor([1.0, 0.975 / 1.025])
    p = torch.softmax(z.mean(1) / t, dim=1)[0]
    kl = sum(float((p * (p.log() - torch.log_softmax(z[0, k] / t, 0))).sum()) for k in range(2))
    assert math.isclose(float(ride.extra(z)), -0.45 * float(t.mean()) ** 2 * kl, rel_tol=1e-5)


def test_ride_without_diversity_applies_ldam_to_the_mean_logits_per_expert():
    """RIDE's code at lambda = 0 (`ride_loss_logits = output_logits`): each of the K terms is LDAM of the mean."""
    from bench.methods.losses import LDAMLoss, RIDELoss

    torch.manual_seed(1)
    z, y = torch.randn(4, 3, 5) * 5, torch.tensor([0, 1, 4, 2])
    counts = [40, 20, 10, 5, 2]
    ride = RIDELoss(counts, 0.5, 30.0, 0.0, 1.0, 0.05)
    assert torch.allclose(ride(z, y), 3 * LDAMLoss(counts, 0.5, 30.0)(z.mean(1) / 30.0, y), atol=1e-5)
    assert ride.extra(z) == 0.0


def test_sade_mirrored_prior_and_loss_by_hand():
    from bench.methods.losses import SADELoss, mirrored_prior

    assert torch.allclose(mirrored_prior(torch.tensor([0.2, 0.5, 0.3])), torch.tensor([0.5, 0.2, 0.3]))
    counts = [2, 5, 3]                                               # prior [.2, .5, .3], mirrored [.5, .2, .3]
    z = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    y = torch.tensor([2])
    pi, inv = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([0.5, 0.2, 0.3])
    want = sum(float(torch.nn.functional.cross_entropy(zk[None], y))
               for zk in (z[0, 0], z[0, 1] + pi.log(), z[0, 2] + pi.log() - 2.0 * inv.log()))
    assert math.isclose(float(SADELoss(counts, 2.0)(z, y)), want, rel_tol=1e-5)
    built = make_loss(LossConfig(name="sade", sade_tau=2.0), counts, experts=3)
    assert math.isclose(float(built(z, y)), want, rel_tol=1e-5)


def test_a_single_model_loss_on_experts_sums_over_them():
    torch.manual_seed(2)
    z, y = torch.randn(5, 2, 3), torch.tensor([0, 1, 2, 0, 1])
    per_expert = make_loss(LossConfig(name="ce"), [5, 3, 1], experts=2)
    assert torch.allclose(per_expert(z, y), sum(torch.nn.functional.cross_entropy(z[:, k], y) for k in range(2)))
    with pytest.raises(ValueError, match="trains several experts"):
        make_loss(LossConfig(name="sade"), [5, 3, 1])


def test_ride_rank_shares_recombine_the_global_loss():
    """RIDE after DRW's epoch under DDP: the weighted CE takes rank r's share of sum_i w_{y_i}, the diversity term
    (`extra`, a batch mean) its share of the samples, as the training step weighs them; the ranks' objectives then
    add up to the global batch's loss, where one share for both terms would not."""
    from bench.methods.losses import RIDELoss

    torch.manual_seed(3)
    counts = [30, 6, 1]
    z, y = torch.randn(7, 2, 3) * 4, torch.tensor([0, 0, 1, 2, 0, 1, 2])
    ride = RIDELoss(counts, 0.5, 30.0, -0.45, 1.0, 0.05, cb_weights(counts, 0.9999), 0, "weights")
    ride.set_epoch(1)
    whole = float(ride(z, y) + ride.extra(z))
    parts = [slice(0, 3), slice(3, 7)]
    zs = [float(ride.normalizer(y[s])) for s in parts]
    ns = [len(y[s]) for s in parts]
    ranks = [float(ride(z[s], y[s])) * zs[i] / sum(zs) + float(ride.extra(z[s])) * ns[i] / sum(ns)
             for i, s in enumerate(parts)]
    assert sum(ranks) == pytest.approx(whole, rel=1e-5)
    one_share = sum(float(ride(z[s], y[s]) + ride.extra(z[s])) * zs[i] / sum(zs) for i, s in enumerate(parts))
    assert one_share != pytest.approx(whole, rel=1e-3)


def test_distillation_term_by_hand():
    """RIDE's RIDELossWithDistill: K (inner + w T^2 KL(softmax(t / T) || softmax(z_bar / T))), z_bar the student
    experts' mean logits, t the teacher's prediction, KL a batch mean; repeat=once drops the factor K. Two images,
    two experts, two classes, T 2, w 0.5, inner = the sum over experts of CE."""
    from bench.config import DistillConfig
    from bench.methods.distill import DistillLoss, Taught

    z = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [3.0, -1.0]]])      # (B, K, C)
    t = torch.tensor([[0.5, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1])
    inner = make_loss(LossConfig(name="ce"), [5, 5], experts=2)
    loss = DistillLoss(inner, DistillConfig(teacher="t", temperature=2.0, weight=0.5), experts=2)

    def softmax(v):
        e = [math.exp(a) for a in v]
        return [a / sum(e) for a in e]
    ce = sum(-math.log(softmax(z[i, k].tolist())[int(y[i])]) for i in range(2) for k in range(2)) / 2
    kl = 0.0
    for i in range(2):
        zbar = [(float(z[i, 0, c]) + float(z[i, 1, c])) / 2 / 2.0 for c in range(2)]
        p, q = softmax([float(a) / 2.0 for a in t[i]]), softmax(zbar)
        kl += sum(pc * math.log(pc / qc) for pc, qc in zip(p, q))
    out = {"logits": z, "teacher": t}
    assert math.isclose(float(loss(out, y)), 2 * ce, rel_tol=1e-6)
    assert math.isclose(float(loss.extra(out)), 2 * 0.5 * 4.0 * kl / 2, rel_tol=1e-6)
    once = DistillLoss(inner, DistillConfig(teacher="t", temperature=2.0, weight=0.5, repeat="once"), experts=2)
    assert math.isclose(float(once(out, y)), ce, rel_tol=1e-6)

    # Taught: the teacher's prediction is its experts' mean, without gradients, in its own BatchNorm mode
    teacher = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.Unflatten(1, (1, 2)))
    class Both(torch.nn.Module):
        def forward(self, x):
            return x, x
    taught = Taught(Both(), teacher, "eval")
    taught.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    h, out = taught(torch.tensor([[1.0, 3.0]]))
    assert torch.equal(out["teacher"], torch.tensor([[1.0, 3.0]]) / math.sqrt(1 + 1e-5))
