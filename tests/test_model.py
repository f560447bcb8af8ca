"""The Seq2Seq model: cached decoding against teacher forcing, padding, tying, backends checked before compute."""

import pytest
import torch
import torch.nn.functional as F

from nmt.attention import AttentionBackendError, AttentionConfig
from nmt.config import AttentionSites, ModelConfig
from nmt.model import build_model

VARIANT_SITES = {
    "mha": AttentionSites(),
    "gqa": AttentionSites(*(AttentionConfig(n_kv_heads=2) for _ in range(3))),
    "mqa": AttentionSites(*(AttentionConfig(n_kv_heads=1) for _ in range(3))),
    "sliding_window": AttentionSites(AttentionConfig(window=3), AttentionConfig(window=3), AttentionConfig()),
    "sparse": AttentionSites(
        AttentionConfig(window=3, global_tokens=2), AttentionConfig(window=3, global_tokens=2), AttentionConfig()
    ),
    "sparse_band": AttentionSites(  # the O(n·(w + g)) kernel teacher-forced, cached steps as one SDPA call
        AttentionConfig(window=3, global_tokens=2, backend="band"),
        AttentionConfig(window=3, global_tokens=2, backend="band"),
        AttentionConfig(),
    ),
    "mixed": AttentionSites(  # a sliding-window encoder, MQA decoder, GQA cross-attention
        AttentionConfig(window=2), AttentionConfig(n_kv_heads=1), AttentionConfig(n_kv_heads=2)
    ),
}


def tiny(**overrides) -> ModelConfig:
    values = dict(vocab_size=50, d_model=32, n_heads=4, d_ff=64, encoder_layers=2, decoder_layers=2, dropout=0.0)
    values.update(overrides)
    return ModelConfig(**values)


def batch(B=3, S=8, T=9, vocab=50):
    src = torch.randint(3, vocab, (B, S))
    src_lengths = torch.tensor([S, 5, 2][:B])
    src = src.masked_fill(torch.arange(S)[None, :] >= src_lengths[:, None], 0)
    return src, src_lengths, torch.randint(3, vocab, (B, T))


@pytest.mark.parametrize("positions", ["sinusoidal", "rope"])
@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("variant", list(VARIANT_SITES))
def test_incremental_decoding_matches_teacher_forcing(variant, norm, positions):
    model = build_model(tiny(attention=VARIANT_SITES[variant], norm=norm, positions=positions)).eval()
    src, src_lengths, tgt = batch()
    with torch.no_grad():
        memory = model.encode(src, src_lengths)
        full = model.decode(tgt, memory, src_lengths)
        state = model.init_state(memory, src_lengths)
        steps = [model.decode_step(tgt[:, t : t + 1], state) for t in range(tgt.size(1))]
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5


@pytest.mark.parametrize("variant", ["sparse", "sparse_band"])
def test_beam_reorder_of_the_state_matches_recomputation(variant):
    model = build_model(tiny(attention=VARIANT_SITES[variant])).eval()
    src, src_lengths, tgt = batch()
    index = torch.tensor([1, 1, 0])
    with torch.no_grad():
        memory = model.encode(src, src_lengths)
        state = model.init_state(memory, src_lengths)
        for t in range(6):
            model.decode_step(tgt[:, t : t + 1], state)
        state.reorder(index)
        step = model.decode_step(tgt[index, 6:7], state)
        expected = model.decode(tgt[index, :7], memory[index], src_lengths[index])[:, 6:7]
    assert (step - expected).abs().max() <= 1e-5


def test_padding_leaves_real_outputs_unchanged():
    model = build_model(tiny(attention=VARIANT_SITES["mixed"])).eval()
    src, src_lengths, tgt = batch(B=1, S=5)
    with torch.no_grad():
        alone = model(src, src_lengths, tgt)
        more_src = torch.cat([src, torch.zeros(1, 7, dtype=torch.long)], dim=1)
        more_tgt = torch.cat([tgt, torch.randint(3, 50, (1, 4))], dim=1)
        padded = model(more_src, src_lengths, more_tgt)
    assert (padded[:, : tgt.size(1)] - alone).abs().max() <= 1e-5


def test_empty_source_gives_finite_outputs():
    model = build_model(tiny()).eval()
    src, _, tgt = batch()
    with torch.no_grad():
        logits = model(src, torch.tensor([8, 0, 3]), tgt)
    assert torch.isfinite(logits).all()


def test_embeddings_tied_when_vocabulary_is_shared_and_padded_to_64():
    model = build_model(tiny())
    assert model.src_embed is model.tgt_embed
    assert model.output.weight is model.tgt_embed.weight
    assert model.src_embed.num_embeddings == 64
    src, src_lengths, tgt = batch()
    assert model(src, src_lengths, tgt).shape == (3, 9, 50)
    separate = build_model(tiny(tgt_vocab_size=70))
    assert separate.src_embed is not separate.tgt_embed
    assert separate.output.weight is separate.tgt_embed.weight
    assert separate(src, src_lengths, tgt).shape == (3, 9, 70)
    untied = build_model(tiny(tie_embeddings=False))
    assert untied.output.weight is not untied.tgt_embed.weight


def test_attention_weights_per_layer_and_head():
    model = build_model(tiny(attention=VARIANT_SITES["gqa"])).eval()
    src, src_lengths, tgt = batch()
    with torch.no_grad():
        with model.recording_attention() as weights:
            with_weights = model.decode(tgt, model.encode(src, src_lengths), src_lengths)
        plain = model.decode(tgt, model.encode(src, src_lengths), src_lengths)
    assert (with_weights - plain).abs().max() <= 1e-5
    assert [w.shape for w in weights["encoder_self"]] == [(3, 4, 8, 8)] * 2
    assert [w.shape for w in weights["cross"]] == [(3, 4, 9, 8)] * 2
    assert torch.all(weights["decoder_self"][0].triu(1) == 0)  # causal
    assert torch.all(weights["cross"][0][1, :, :, 5:] == 0)  # source padding
    # Outside the block nothing is recorded, and the configured backends run again.
    assert all(layer.recording is None for layer in model.attention_layers())
    with torch.no_grad():
        model.decode(tgt, model.encode(src, src_lengths), src_lengths)
    assert [len(w) for w in weights.values()] == [2, 2, 2]


def test_the_model_learns_a_copy_task():
    """Gradients reach every parameter and a few dozen steps memorise a small batch."""
    model = build_model(tiny(attention=VARIANT_SITES["mixed"])).train()
    src, src_lengths, _ = batch(B=3, S=8, T=8)
    tgt_in = F.pad(src, (1, 0), value=1)[:, :-1]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        logits = model(src, src_lengths, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, 50), src.reshape(-1), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < 0.2 * losses[0]


def test_flash_on_cpu_fails_before_any_compute():
    sites = AttentionSites(AttentionConfig(), AttentionConfig(), AttentionConfig(backend="flash"))
    model = build_model(tiny(attention=sites))
    embedded = []
    model.src_embed.register_forward_hook(lambda *args: embedded.append(1))
    src, src_lengths, tgt = batch()
    with pytest.raises(AttentionBackendError, match=r"attention cross: backend 'flash' needs a CUDA device"):
        model(src, src_lengths, tgt)
    assert embedded == []


def test_flex_training_on_cpu_fails_before_any_compute():
    sites = AttentionSites(AttentionConfig(backend="flex"), AttentionConfig(), AttentionConfig())
    model = build_model(tiny(attention=sites)).train()
    src, src_lengths, tgt = batch()
    with pytest.raises(AttentionBackendError, match="no backward pass on CPU"):
        model(src, src_lengths, tgt)
    with torch.no_grad():  # inference with flex is fine
        model.eval()(src, src_lengths, tgt)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_heads=5), r"d_model \(32\) must be divisible by attention.encoder_self.n_heads \(5\)"),
        (
            dict(attention=AttentionSites(cross=AttentionConfig(n_kv_heads=3))),
            r"attention.cross: n_heads \(4\) must be divisible by n_kv_heads \(3\)",
        ),
        (dict(norm="sandwich"), r"norm \('sandwich'\) must be one of pre, post"),
        (dict(positions="alibi"), r"positions \('alibi'\) must be one of sinusoidal, rope"),
        (dict(pad_id=99), r"pad_id \(99\)"),
        (dict(dropout=1.5), r"dropout \(1.5\)"),
        (dict(d_model=12, n_heads=4, positions="rope"), r"rope.*even head_dim.*3"),
    ],
)
def test_bad_model_configs_name_the_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


@pytest.mark.parametrize("cross", [AttentionConfig(), AttentionConfig(window=3)], ids=["shared", "cross-window"])
def test_beams_sharing_a_source_row_match_recomputation(cross):
    """select_beams keeps one source row per sentence (unless a cross window makes query positions matter); the
    steps after it, and after a general reorder, equal recomputing the selected prefixes."""
    model = build_model(tiny(attention=AttentionSites(AttentionConfig(), AttentionConfig(), cross))).eval()
    src, src_lengths, tgt = batch()
    rows, kept = torch.tensor([0, 0, 2, 2]), torch.tensor([0, 2])  # sentences 0 and 2 go on, two beams each
    with torch.no_grad():
        memory = model.encode(src, src_lengths)
        state = model.init_state(memory, src_lengths)
        model.decode_step(tgt[:, :1], state)
        state.select_beams(rows, kept, 2)
        assert (state.beam, state.memory.size(0)) == ((2, 2) if cross.window is None else (1, 4))
        prefix = torch.cat([tgt[rows, :1], torch.randint(3, 50, (4, 1))], dim=1)
        step = model.decode_step(prefix[:, 1:], state)
        expected = model.decode(prefix, memory[rows], src_lengths[rows])[:, 1:]
        assert (step - expected).abs().max() <= 1e-5
        index = torch.tensor([3, 0])
        state.reorder(index)
        assert (state.beam, state.memory.size(0)) == (1, 2)
        prefix = torch.cat([prefix[index], torch.randint(3, 50, (2, 1))], dim=1)
        step = model.decode_step(prefix[:, 2:], state)
        expected = model.decode(prefix, memory[rows[index]], src_lengths[rows[index]])[:, 2:]
        assert (step - expected).abs().max() <= 1e-5
