"""The fused CPU loss (nmt.training.loss) against the readable path: F.linear, then F.cross_entropy with label
smoothing."""

import pytest
import torch
import torch.nn.functional as F

from nmt.data.tokenizer import PAD_ID
from nmt.training.loss import ProjectedLoss, fused_applies, label_smoothed_loss


def _inputs(rows=37, d_model=16, vocab=50, pad_every=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, d_model, generator=g).requires_grad_()
    weight = torch.randn(vocab, d_model, generator=g).requires_grad_()
    target = torch.randint(1, vocab, (rows,), generator=g)
    target[::pad_every] = PAD_ID
    return hidden, weight, target


def _reference(hidden, weight, target, smoothing):
    """float64 F.cross_entropy on F.linear: the loss and its gradients."""
    h64, w64 = (t.detach().double().requires_grad_() for t in (hidden, weight))
    loss = F.cross_entropy(F.linear(h64, w64), target, ignore_index=PAD_ID, label_smoothing=smoothing, reduction="sum")
    loss.backward()
    return loss.detach(), h64.grad, w64.grad


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_fused_loss_and_gradients_match_cross_entropy(smoothing):
    hidden, weight, target = _inputs()
    loss, n_tokens = ProjectedLoss()(hidden, weight, target, smoothing)
    (loss * 0.5).backward()  # a non-unit upstream gradient must scale both gradients
    expected, grad_hidden, grad_weight = _reference(hidden, weight, target, smoothing)
    assert n_tokens == int((target != PAD_ID).sum())
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(hidden.grad.double(), 0.5 * grad_hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weight.grad.double(), 0.5 * grad_weight, rtol=1e-4, atol=1e-5)
    assert hidden.grad[target == PAD_ID].abs().max() == 0  # padding rows get no gradient


def test_fused_matches_the_readable_training_loss_on_3d_batches():
    """(B, T, d_model) hidden states and (B, T) targets, as the LightningModule passes them."""
    hidden, weight, target = _inputs(rows=24)
    hidden3, target2 = hidden.detach().view(4, 6, -1).requires_grad_(), target.view(4, 6)
    loss, n = ProjectedLoss()(hidden3, weight, target2, 0.1)
    expected, n_expected = label_smoothed_loss(F.linear(hidden3, weight), target2, 0.1)
    assert n == n_expected
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)


def test_the_buffer_is_reused_across_steps_and_never_shared_by_two_pending_backwards():
    criterion = ProjectedLoss()
    first = _inputs(seed=1)
    loss, _ = criterion(*first, 0.1)
    buffer = criterion.workspace.buffer
    assert criterion.workspace.lent
    second = _inputs(seed=2)  # a second forward before the first backward: a one-off buffer
    loss2, _ = criterion(*second, 0.1)
    assert criterion.workspace.buffer is buffer
    loss2.backward()
    assert criterion.workspace.lent  # still lent to the first graph
    loss.backward()
    assert not criterion.workspace.lent
    for (hidden, weight, target) in (first, second):
        _, grad_hidden, grad_weight = _reference(hidden, weight, target, 0.1)
        torch.testing.assert_close(hidden.grad.double(), grad_hidden, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(weight.grad.double(), grad_weight, rtol=1e-4, atol=1e-5)
    third = _inputs(rows=20, seed=3)  # fewer rows: a view of the same buffer
    criterion(*third, 0.1)[0].backward()
    assert criterion.workspace.buffer is buffer
    _, grad_hidden, _ = _reference(*third, 0.1)
    torch.testing.assert_close(third[0].grad.double(), grad_hidden, rtol=1e-4, atol=1e-5)


def test_without_gradients_nothing_is_lent():
    criterion = ProjectedLoss()
    hidden, weight, target = _inputs()
    with torch.no_grad():
        loss, _ = criterion(hidden, weight, target, 0.0)
    assert not criterion.workspace.lent
    torch.testing.assert_close(loss.double(), _reference(hidden, weight, target, 0.0)[0], rtol=1e-5, atol=1e-4)


def test_other_dtypes_and_autocast_take_the_readable_path():
    hidden, weight, target = _inputs()
    assert fused_applies(hidden, weight)
    assert not fused_applies(hidden.double(), weight.double())
    assert not fused_applies(hidden.bfloat16(), weight)  # bf16 without autocast: the readable path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_applies(hidden, weight) and fused_applies(hidden.bfloat16(), weight)
        assert not fused_applies(hidden, weight.bfloat16())
    with torch.autocast("cpu", dtype=torch.float16):
        assert not fused_applies(hidden, weight)
    criterion = ProjectedLoss()
    loss, _ = criterion(hidden.double(), weight.double(), target, 0.1)
    assert criterion.workspace.buffer is None
    torch.testing.assert_close(loss.double(), _reference(hidden, weight, target, 0.1)[0], rtol=1e-5, atol=1e-4)


def test_tied_model_parameters_get_the_readable_paths_gradients():
    """Through the whole model (tied embeddings and output): features + fused loss == forward + F.cross_entropy."""
    from nmt.config import ModelConfig
    from nmt.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=40, d_model=16, n_heads=2, d_ff=32, encoder_layers=1,
                                    decoder_layers=1, dropout=0.0))
    src = torch.randint(4, 40, (3, 7))
    lengths = torch.tensor([7, 5, 3])
    tgt_in, tgt_out = torch.randint(4, 40, (3, 6)), torch.randint(4, 40, (3, 6))
    tgt_out[2, 4:] = PAD_ID
    grads = []
    for fused in (True, False):
        model.zero_grad()
        if fused:
            loss, _ = ProjectedLoss()(model.features(src, lengths, tgt_in), model.output_weight(), tgt_out, 0.1)
        else:
            loss, _ = label_smoothed_loss(model(src, lengths, tgt_in), tgt_out, 0.1)
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_graph_dropped_without_backward_gives_the_buffer_back():
    criterion = ProjectedLoss()
    loss, _ = criterion(*_inputs(seed=4), 0.1)
    buffer = criterion.workspace.buffer
    assert criterion.workspace.lent
    del loss  # e.g. a step that raised before backward
    assert not criterion.workspace.lent
    hidden, weight, target = _inputs(seed=5)
    criterion(hidden, weight, target, 0.1)[0].backward()
    assert criterion.workspace.buffer is buffer
    _, grad_hidden, _ = _reference(hidden, weight, target, 0.1)
    torch.testing.assert_close(hidden.grad.double(), grad_hidden, rtol=1e-4, atol=1e-5)


def test_a_second_backward_through_the_same_graph_is_a_clear_error():
    loss, _ = ProjectedLoss()(*_inputs(), 0.1)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


@pytest.mark.parametrize("hidden_dtype", [torch.float32, torch.bfloat16])
def test_under_bf16_autocast_the_fused_loss_matches_the_readable_path(hidden_dtype):
    """bf16 products, float32 softmax: the readable path under autocast (F.linear in bf16, cross-entropy in float32)
    computes the same loss and gradients, to bf16's rounding of the products; both buffers are kept."""
    hidden, weight, target = _inputs(rows=64, d_model=32, vocab=300)
    hidden = hidden.detach().to(hidden_dtype).requires_grad_()
    criterion = ProjectedLoss()
    results = []
    for fused in (True, False):
        hidden.grad = weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused:
                loss, n = criterion(hidden, weight, target, 0.1)
            else:
                loss, n = label_smoothed_loss(F.linear(hidden, weight), target, 0.1)
        (loss * 0.5).backward()
        results.append((loss.detach(), n, hidden.grad, weight.grad))
    (loss, n, grad_hidden, grad_weight), (loss_ref, n_ref, grad_hidden_ref, grad_weight_ref) = results
    assert n == n_ref and loss.dtype == torch.float32
    assert grad_hidden.dtype == hidden_dtype and grad_weight.dtype == torch.float32
    torch.testing.assert_close(loss, loss_ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(grad_hidden.float(), grad_hidden_ref.float(), rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(grad_weight, grad_weight_ref, rtol=2e-2, atol=2e-3)
    # the products ran in bf16: a float32 product would differ from autocast's by more than float32 rounding
    exact, _, _ = _reference(hidden.float(), weight, target, 0.1)
    assert (loss.double() - exact).abs() > 1e-3
    assert criterion.workspace.buffer.dtype == torch.float32 and criterion.low.buffer.dtype == torch.bfloat16
    buffers = criterion.workspace.buffer, criterion.low.buffer
    with torch.autocast("cpu", dtype=torch.bfloat16):
        criterion(hidden, weight, target, 0.1)[0].backward()
    assert criterion.workspace.buffer is buffers[0] and criterion.low.buffer is buffers[1]  # reused, not reallocated


def test_under_bf16_autocast_two_pending_graphs_and_tied_weights_get_the_readable_gradients():
    """Two forwards before their backwards (run in reverse order), through a whole tied model under bf16 autocast:
    every parameter gradient as the readable path computes it under autocast."""
    from nmt.config import ModelConfig
    from nmt.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=40, d_model=16, n_heads=2, d_ff=32, encoder_layers=1,
                                    decoder_layers=1, dropout=0.0))
    batches = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        src, tgt_in, tgt_out = (torch.randint(4, 40, (3, 6), generator=g) for _ in range(3))
        tgt_out[1, 4:] = PAD_ID
        batches.append((src, torch.tensor([6, 5, 3]), tgt_in, tgt_out))
    criterion, grads = ProjectedLoss(), []
    for fused in (True, False):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = [criterion(model.features(src, lengths, tgt_in), model.output_weight(), tgt_out, 0.1)[0]
                      if fused else label_smoothed_loss(model(src, lengths, tgt_in), tgt_out, 0.1)[0]
                      for src, lengths, tgt_in, tgt_out in batches]
        for loss in reversed(losses):
            loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=2e-2, atol=2e-3, msg=name)
