"""Seq2Seq.head_gates: a gate ξ_h on each head's output (Michel et al. 2019) on every path — ones change nothing bit
for bit, a zero equals removing the head from the output projection, gradients are exact, cached decoding and beam
search are gated as teacher forcing is, and per-row gates give each row's own gradient."""

import copy

import pytest
import torch
import torch.nn.functional as F

from nmt.attention import AttentionConfig
from nmt.config import SITES, AttentionSites, DecodeConfig
from nmt.data.tokenizer import BOS_ID, PAD_ID
from nmt.decoding.search import greedy
from nmt.model import build_model
from tests.test_model import VARIANT_SITES, batch, tiny


def _masked(gates: dict[str, torch.Tensor], heads: list[tuple[str, int, int]]) -> None:
    with torch.no_grad():
        for site, layer, head in heads:
            gates[site][layer, head] = 0.0


MASKED = [("encoder_self", 0, 1), ("decoder_self", 1, 3), ("cross", 0, 2), ("cross", 1, 0)]


@pytest.mark.parametrize("variant", ["mha", "gqa", "sparse", "mixed"])
def test_gates_of_ones_change_nothing_bit_for_bit(variant):
    model = build_model(tiny(attention=VARIANT_SITES[variant])).eval()
    src, src_lengths, tgt = batch()
    with torch.no_grad():
        expected = model(src, src_lengths, tgt)
        memory = model.encode(src, src_lengths)
        state = model.init_state(memory, src_lengths)
        expected_steps = [model.decode_step(tgt[:, t : t + 1], state) for t in range(4)]
        with model.head_gates() as gates:
            assert {site: tuple(g.shape) for site, g in gates.items()} == {site: (2, 4) for site in SITES}
            got = model(src, src_lengths, tgt)
            state = model.init_state(model.encode(src, src_lengths), src_lengths)
            got_steps = [model.decode_step(tgt[:, t : t + 1], state) for t in range(4)]
    assert torch.equal(got, expected)
    assert all(torch.equal(a, b) for a, b in zip(got_steps, expected_steps))
    assert all(layer.head_gate is None for layer in model.attention_layers())  # released after the block


@pytest.mark.parametrize("variant", ["mha", "gqa"])
@pytest.mark.parametrize("site", SITES)
def test_a_zero_gate_removes_the_head_from_the_output_projection(variant, site):
    """The oracle is a deep copy whose out_proj ignores head h's columns; the gated model itself is not edited."""
    model = build_model(tiny(attention=VARIANT_SITES[variant])).eval()
    src, src_lengths, tgt = batch()
    layer, head = 1, 2
    oracle = copy.deepcopy(model)
    attention = [a for a in oracle.attention_layers() if a.site == site][layer]
    with torch.no_grad():
        attention.out_proj.weight[:, head * attention.head_dim : (head + 1) * attention.head_dim] = 0.0
        expected = oracle(src, src_lengths, tgt)
        with model.head_gates() as gates:
            _masked(gates, [(site, layer, head)])
            got = model(src, src_lengths, tgt)
        unmasked = model(src, src_lengths, tgt)
    assert (got - expected).abs().max() <= 1e-5
    assert (unmasked - expected).abs().max() > 1e-3  # the head mattered, and the mask ended with the block


def test_gradients_on_the_gates_pass_gradcheck():
    model = build_model(tiny(d_model=16, d_ff=32, attention=VARIANT_SITES["gqa"])).double().eval()
    src, src_lengths, tgt = batch(B=2, S=5, T=4)
    inputs = tuple(torch.rand(2, 4, dtype=torch.double, requires_grad=True) + 0.5 for _ in SITES)

    def loss(*gates: torch.Tensor) -> torch.Tensor:
        with model.head_gates(dict(zip(SITES, gates))):
            return model(src, src_lengths, tgt).logsumexp(-1).sum()

    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("variant", ["mha", "mixed"])
def test_cached_greedy_decoding_is_gated_as_teacher_forcing_is(variant):
    """Greedy search over the KV caches under masked heads picks, at every step, the argmax of the teacher-forced
    logits under the same gates; and each cached step's logits equal teacher forcing's."""
    model = build_model(tiny(attention=VARIANT_SITES[variant])).eval()
    src, src_lengths, tgt = batch()
    with torch.no_grad(), model.head_gates() as gates:
        _masked(gates, MASKED)
        hyps = greedy(model, src, src_lengths, DecodeConfig(beam=1, max_len_a=0.0, max_len_b=6))
        for row, (hyp,) in enumerate(hyps):
            tokens = torch.tensor([[BOS_ID, *hyp.tokens]])
            logits = model(src[row : row + 1, : src_lengths[row]], src_lengths[row : row + 1], tokens)[0, :-1]
            logits[:, [PAD_ID, BOS_ID]] = float("-inf")  # what greedy search never picks
            assert torch.equal(logits.argmax(-1), torch.tensor(hyp.tokens, dtype=torch.long))
        full = model(src, src_lengths, tgt)
        state = model.init_state(model.encode(src, src_lengths), src_lengths)
        steps = torch.cat([model.decode_step(tgt[:, t : t + 1], state) for t in range(tgt.size(1))], dim=1)
        again = model.decode(tgt, model.encode(src, src_lengths), src_lengths)
    assert (steps - full).abs().max() <= 1e-5
    assert sum(len(h.tokens) for (h,) in hyps) > 0
    assert torch.equal(again, full)  # the same gates throughout the block


def test_beams_sharing_a_source_row_are_gated_per_head():
    """Beam search's cross-attention reshapes a sentence's beams into query rows of one source row: the gate is per
    head there too, so each beam's step equals teacher forcing its prefix under the same gates."""
    model = build_model(tiny(attention=AttentionSites())).eval()
    src, src_lengths, tgt = batch()
    rows, kept = torch.tensor([0, 0, 2, 2]), torch.tensor([0, 2])
    with torch.no_grad(), model.head_gates() as gates:
        _masked(gates, MASKED)
        memory = model.encode(src, src_lengths)
        state = model.init_state(memory, src_lengths)
        model.decode_step(tgt[:, :1], state)
        state.select_beams(rows, kept, 2)
        assert state.beam == 2
        prefix = torch.cat([tgt[rows, :1], torch.randint(3, 50, (4, 1))], dim=1)
        step = model.decode_step(prefix[:, 1:], state)
        expected = model.decode(prefix, memory[rows], src_lengths[rows])[:, 1:]
    assert (step - expected).abs().max() <= 1e-5


def test_a_gate_per_batch_row_gives_each_row_its_own_gradient():
    """What importance (nmt.analysis.head_scores) rests on: with (layers, B, n_heads) gates, the gradient of the
    summed loss at row b is the gradient of row b's loss alone, as if row b were its own batch."""
    model = build_model(tiny(dropout=0.0)).eval()
    src, src_lengths, tgt = batch()
    target = torch.randint(3, 50, tgt.shape)

    def row_loss(logits, rows):
        return F.cross_entropy(logits.flatten(0, 1), target[rows].flatten(), reduction="sum")

    with model.head_gates(requires_grad=True, batch=3) as gates:
        total = row_loss(model(src, src_lengths, tgt), slice(None))
        per_row = torch.autograd.grad(total, list(gates.values()))  # (layers, B, n_heads) per site
    for b in range(3):
        one = slice(b, b + 1)
        with model.head_gates(requires_grad=True) as gates:
            loss = row_loss(model(src[one, : src_lengths[b]], src_lengths[one], tgt[one]), one)
            alone = torch.autograd.grad(loss, list(gates.values()))
        for got, expected in zip(per_row, alone):
            assert (got[:, b] - expected).abs().max() <= 1e-4 * (1 + expected.abs().max())


def test_gates_of_the_wrong_shape_are_refused_naming_the_site():
    model = build_model(tiny(attention=AttentionSites(cross=AttentionConfig(n_heads=2))))
    good = {"encoder_self": torch.ones(2, 4), "decoder_self": torch.ones(2, 4)}
    with pytest.raises(ValueError, match=r"head gates for cross: expected \(2, \[batch,\] 2\), got \(2, 4\)"):
        with model.head_gates({**good, "cross": torch.ones(2, 4)}):
            pass
    assert all(layer.head_gate is None for layer in model.attention_layers())  # none gated by the refused call
    with model.head_gates() as gates:
        assert tuple(gates["cross"].shape) == (2, 2)
        with pytest.raises(RuntimeError, match="do not nest"):  # an inner block's exit would ungate the outer's
            with model.head_gates():
                pass
        assert all(layer.head_gate is not None for layer in model.attention_layers())


@pytest.mark.parametrize("backend", ["sdpa", "band", "matmul"])  # flex compiles ~15 s; tested elsewhere
def test_every_cpu_backend_is_gated_as_math_is(backend):
    """The gate acts after `attend`, so a masked head is masked whatever kernel computed it (band needs a window)."""
    window = 3 if backend == "band" else None
    outputs = {}
    for name in ("math", backend):
        config = AttentionConfig(backend=name, window=window)
        cross_backend = "sdpa" if name == "band" else name  # band serves self-attention windows only
        torch.manual_seed(0)
        model = build_model(tiny(attention=AttentionSites(encoder_self=config, decoder_self=config,
                                                          cross=AttentionConfig(backend=cross_backend)))).eval()
        src, src_lengths, tgt = batch()
        with torch.no_grad(), model.head_gates() as gates:
            _masked(gates, MASKED)
            outputs[name] = model(src, src_lengths, tgt)
        with torch.no_grad():
            ungated = model(src, src_lengths, tgt)
    assert (outputs[backend] - outputs["math"]).abs().max() <= 1e-5
    assert (ungated - outputs[backend]).abs().max() > 1e-3  # the masked heads did matter
