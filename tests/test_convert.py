"""`nmt convert`: K/V heads mean-pooled per group, everything else copied; exact where heads already share weights;
the KV cache shrinks by exactly the group size; conversions that cannot be done are refused in one line."""

import json
from pathlib import Path

import pytest
import torch

from nmt.attention import Attention
from nmt.cli import main as cli_main
from nmt.config import ModelConfig
from nmt.data.tokenizer import TokenizerSettings, load_or_train
from nmt.decoding.export import export_model
from nmt.decoding.loading import load_model
from nmt.model import build_model, kv_cache_bytes
from nmt.model.convert import convert_model, parse_targets, pool_heads
from tests.conftest import multi30k_sample

HEADS, HEAD_DIM = 4, 8


def mha(**overrides) -> ModelConfig:
    values = dict(vocab_size=400, d_model=HEADS * HEAD_DIM, n_heads=HEADS, d_ff=64, encoder_layers=2,
                  decoder_layers=2, dropout=0.0)
    return ModelConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    spm_dir = tmp_path_factory.mktemp("spm")
    return load_or_train(lambda: multi30k_sample(1000), TokenizerSettings(400), "convert", spm_dir)


def share_kv_within_groups(model, targets: dict[str, int]) -> None:
    """Make every head of a future group a copy of the group's first head, in K and V, weights and biases."""
    with torch.no_grad():
        for layer in model.attention_layers():
            if layer.site not in targets:
                continue
            proj = layer.kv_proj if layer.cross else layer.qkv_proj
            offset = 0 if layer.cross else layer.n_heads * HEAD_DIM
            size = HEADS // targets[layer.site]  # old heads per new head
            for param in (proj.weight, proj.bias):
                for part in range(2):  # K rows, then V rows
                    heads = param[offset + part * HEADS * HEAD_DIM:][: HEADS * HEAD_DIM].view(HEADS, HEAD_DIM, -1)
                    heads.copy_(heads[::size].repeat_interleave(size, dim=0))


def outputs(model, src, lengths, tgt):
    """Teacher-forced logits and the logits of cached decoding steps."""
    with torch.no_grad():
        memory = model.encode(src, lengths)
        full = model.decode(tgt, memory, lengths)
        state = model.init_state(memory, lengths)
        steps = torch.cat([model.decode_step(tgt[:, t : t + 1], state) for t in range(tgt.size(1))], dim=1)
    return full, steps


@pytest.mark.parametrize("targets", [{"decoder_self": 2, "cross": 2}, {"encoder_self": 1, "decoder_self": 1,
                                                                      "cross": 1}, {"cross": 1}],
                         ids=["gqa2-decoder", "mqa-all", "mqa-cross"])
@pytest.mark.parametrize("positions", ["sinusoidal", "rope"])
def test_heads_that_already_share_kv_convert_exactly(targets, positions):
    """In float64: the converted model's projections are smaller GEMMs, which round differently in float32 (1e-6 on
    logits of size 3); float64 shows the conversion itself is exact."""
    torch.manual_seed(0)
    model = build_model(mha(positions=positions)).double().eval()
    with torch.no_grad():
        for param in model.parameters():  # non-zero biases too, so pooling them is tested
            param.add_(0.1 * torch.randn_like(param))
    share_kv_within_groups(model, targets)
    converted = convert_model(model, targets)
    assert {layer.site: layer.n_kv_heads for layer in converted.attention_layers()} == {
        site: targets.get(site, HEADS) for site in ("encoder_self", "decoder_self", "cross")}
    src, tgt = torch.randint(4, 400, (3, 9)), torch.randint(4, 400, (3, 7))
    lengths = torch.tensor([9, 5, 1])
    for got, expected in zip(outputs(converted, src, lengths, tgt), outputs(model, src, lengths, tgt)):
        assert (got - expected).abs().max() <= 1e-6


def test_every_other_weight_is_copied_and_kv_heads_are_group_means():
    torch.manual_seed(0)
    model = build_model(mha(attention={"cross": {"n_kv_heads": 2}}))
    converted = convert_model(model, {"decoder_self": 2, "cross": 1})
    old, new = model.state_dict(), converted.state_dict()
    pooled = {k for k in old if k.startswith("decoder_layers.") and "kv_proj" in k}  # qkv_proj and kv_proj
    assert all(torch.equal(old[k], new[k]) for k in old if k not in pooled)
    weight = old["decoder_layers.0.self_attn.qkv_proj.weight"]  # q rows (4 heads), k rows (4), v rows (4)
    k_heads = weight[HEADS * HEAD_DIM : 2 * HEADS * HEAD_DIM].view(HEADS, HEAD_DIM, -1)
    new_k = new["decoder_layers.0.self_attn.qkv_proj.weight"][HEADS * HEAD_DIM :][: 2 * HEAD_DIM].view(2, HEAD_DIM, -1)
    assert torch.allclose(new_k, torch.stack([k_heads[:2].mean(0), k_heads[2:].mean(0)]))
    v_bias = old["decoder_layers.1.cross_attn.kv_proj.bias"][2 * HEAD_DIM :].view(2, HEAD_DIM)  # GQA-2 → MQA
    assert torch.allclose(new["decoder_layers.1.cross_attn.kv_proj.bias"][HEAD_DIM:], v_bias.mean(0))
    assert torch.equal(pool_heads(torch.arange(4.0).repeat_interleave(2), 2, 2), torch.tensor([0.5, 0.5, 2.5, 2.5]))


def test_the_kv_cache_shrinks_by_exactly_the_group_size_at_converted_sites():
    torch.manual_seed(0)
    model = build_model(mha()).eval()
    src_ids = list(range(4, 17))
    before = kv_cache_bytes(model, src_ids, hyp_len=11, beam=5)
    for targets, self_ratio, cross_ratio in [({"decoder_self": 2, "cross": 2}, 2, 2), ({"cross": 1}, 1, 4),
                                             ({"encoder_self": 1, "decoder_self": 1}, 4, 1)]:
        after = kv_cache_bytes(convert_model(model, targets), src_ids, hyp_len=11, beam=5)
        assert after["self_attention"] * self_ratio == before["self_attention"]
        assert after["cross_attention"] * cross_ratio == before["cross_attention"]


@pytest.mark.parametrize("specs, message", [
    (["decoder_self=8"], "decoder_self=8: mean-pooling can only reduce K/V heads (this model has 4, n_heads 4)"),
    (["cross=3"], "cross=3: 3 does not divide n_heads (4) and the current n_kv_heads (4)"),
    (["cross=0"], "'cross=0': n_kv_heads must be at least 1 (1 is MQA)"),
    (["all=-2"], "'all=-2': n_kv_heads must be at least 1"),
    (["decoder=x"], "'decoder=x': n_kv_heads must be a whole number"),
    (["decoderself=2"], "'decoderself=2': expected SITE=N_KV_HEADS with SITE one of encoder_self, decoder_self, cross"),
])
def test_impossible_conversions_are_one_line_errors(specs, message, tokenizer, tmp_path, capsys):
    source = export_model(build_model(mha()), tokenizer, tmp_path / "model")
    assert cli_main(["convert", str(source), "--out", str(tmp_path / "out"), *specs]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nmt convert: {message}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_an_existing_out_is_replaced_only_with_force(tokenizer, tmp_path, capsys):
    source = export_model(build_model(mha()), tokenizer, tmp_path / "model")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli_main(["convert", str(source), "--out", str(out), "all=2"]) == 2
    assert capsys.readouterr().err == f"nmt convert: --out {out}: already exists; add --force to replace it\n"
    assert (out / "keep.txt").read_text() == "mine"
    assert cli_main(["convert", str(source), "--out", str(out), "all=2", "--force"]) == 0
    assert not (out / "keep.txt").exists() and load_model(out)[0].cfg.site("cross").n_kv_heads == 2


@pytest.mark.parametrize("where, force, message", [
    ("model", True, "would replace {source} — the model being read"),
    (".", True, "would replace {source} — the model being read"),  # the run folder that holds the model
    ("afile", True, "is a file, not a folder"),
    ("afile", False, "is a file, not a folder"),  # not "add --force", which could not help
])
def test_out_never_replaces_the_source_or_a_file(where, force, message, tokenizer, tmp_path, capsys):
    source = export_model(build_model(mha()), tokenizer, tmp_path / "model")
    (tmp_path / "afile").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / where
    assert cli_main(["convert", str(source), "--out", str(out), "all=2", *["--force"] * force]) == 2
    assert capsys.readouterr().err == f"nmt convert: --out {out}: {message.format(source=source.resolve())}" + (
        "; choose a folder path\n" if "file" in message else "; write to another folder\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing left beside it
    assert (tmp_path / "afile").read_text() == "mine" and load_model(source)[0].cfg.site("cross").n_kv_heads == 4


def test_out_paths_that_a_rename_would_mishandle_are_refused_first(tokenizer, tmp_path, capsys):
    """Links, '.', a file above the folder, a link loop: one line each before any work, nothing written; a symlinked
    run folder is still recognised as holding the model (the paths compare with links resolved too)."""
    source = export_model(build_model(mha()), tokenizer, tmp_path / "real" / "model")
    (tmp_path / "run").symlink_to(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "afile").write_text("mine")
    cases = [(tmp_path / "run" / "..", "name the folder to write, not '.' or '..'"),
             (tmp_path / "link", "is a symbolic link; give the folder it points to, or another path"),
             (tmp_path / "loop", "is a symbolic link"),
             (tmp_path / "afile" / "sub", f"{tmp_path / 'afile'} is a file, not a folder; choose a folder path"),
             (tmp_path / "real", f"would replace {tmp_path / 'run' / 'model'} — the model being read")]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for out, message in cases:
        model = tmp_path / "run" / "model"  # read through the link: realpath still finds it inside real/
        assert cli_main(["convert", str(model), "--out", str(out), "all=2", "--force"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"nmt convert: --out {out}: {message}") and err.count("\n") == 1, err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert load_model(source)[0].cfg.site("cross").n_kv_heads == 4
    missing = tmp_path / "nomodel"  # a missing model is named as missing, not as "would replace"
    assert cli_main(["convert", str(missing), "--out", str(tmp_path / "real"), "all=2", "--force"]) == 2
    assert capsys.readouterr().err == f"nmt convert: {missing}: no such model directory or checkpoint\n"


def test_an_out_that_cannot_be_made_is_named_not_its_temporary_folder(tokenizer, tmp_path, capsys):
    source = export_model(build_model(mha()), tokenizer, tmp_path / "model")
    out = Path("/proc/nmt-convert-test")  # no one, root included, makes a folder in /proc
    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc")
    assert cli_main(["convert", str(source), "--out", str(out), "all=2"]) == 2
    assert capsys.readouterr().err == f"nmt convert: {out}: No such file or directory\n"


def test_shorthands_and_later_arguments_win():
    assert parse_targets(["all=1", "cross=2"]) == {"encoder_self": 1, "decoder_self": 1, "cross": 2}
    assert parse_targets(["decoder=2"]) == {"decoder_self": 2, "cross": 2}


def test_the_command_converts_a_directory_or_a_checkpoint_and_keeps_its_extras(tokenizer, tmp_path, capsys):
    model = build_model(mha()).eval()
    source = export_model(model, tokenizer, tmp_path / "model", extra={"bleu_tokenize": "none", "checkpoint": "x"})
    out = tmp_path / "gqa2"
    assert cli_main(["convert", str(source), "--out", str(out), "decoder=2"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    payload = json.loads((out / "config.json").read_text())
    assert payload["bleu_tokenize"] == "none" and payload["checkpoint"] == "x"
    assert payload["conversions"] == [{"from": str(source), "method": "K/V projection heads mean-pooled per group "
                                       "(Ainslie et al. 2023)", "n_kv_heads": {"decoder_self": {"from": 4, "to": 2},
                                                                               "cross": {"from": 4, "to": 2}}}]
    converted, converted_tokenizer = load_model(out)
    assert converted.cfg.site("cross").n_kv_heads == 2 and converted.cfg.site("encoder_self").n_kv_heads == 4
    assert converted_tokenizer.serialized == tokenizer.serialized
    # Again from the result: the records accumulate.
    assert cli_main(["convert", str(out), "--out", str(tmp_path / "mqa"), "all=1"]) == 0
    assert len(json.loads((tmp_path / "mqa" / "config.json").read_text())["conversions"]) == 2
    # A training checkpoint (as Lightning writes it: hyperparameters, "model."-prefixed weights, the tokenizer).
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": {"model": model.cfg.to_dict(), "bleu_tokenize": "13a"},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "nmt_spm": torch.frombuffer(bytearray(tokenizer.serialized), dtype=torch.uint8)}, checkpoint)
    assert cli_main(["convert", str(checkpoint), "--out", str(tmp_path / "from_ckpt"), "all=2"]) == 0
    payload = json.loads((tmp_path / "from_ckpt" / "config.json").read_text())
    assert payload["bleu_tokenize"] == "13a" and payload["checkpoint"] == "last.ckpt"
    assert isinstance(load_model(tmp_path / "from_ckpt")[0].decoder_layers[0].cross_attn, Attention)


def test_the_uptrain_scripts_runs_match_its_conversions(tmp_path):
    """scripts/uptrain_table.sh (issue 26's finding) parses, and each variant's `nmt train` attention overrides give
    exactly the model its `nmt convert` writes, so no uptraining run is refused by init_from hours in."""
    import re
    import subprocess
    from pathlib import Path

    from nmt.config.compose import compose_config, model_config
    from nmt.model.convert import converted_config
    from nmt.training.init_from import init_from_problem

    script = Path(__file__).resolve().parents[1] / "scripts" / "uptrain_table.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    variants = re.findall(r'^  "([\w-]+)\|([\w=]+)\|([^"]+)"$', script.read_text(), flags=re.M)
    assert [name for name, _, _ in variants] == ["gqa2-all", "mqa-all", "gqa2-decoder", "mqa-decoder", "mha-control"]
    mha_cfg = model_config(compose_config(["experiment=wu_tiny_en_de"]))
    for name, sites, overrides in variants:
        sites = sites.replace("all=0", f"all={mha_cfg.n_heads}")  # the control: as many K/V heads as it has
        converted = tmp_path / name
        converted.mkdir()
        (converted / "config.json").write_text(json.dumps({"model": converted_config(
            mha_cfg, parse_targets([sites])).to_dict()}))
        for file in ("model.safetensors", "spm.model"):
            (converted / file).touch()
        run_cfg = model_config(compose_config(["experiment=wu_tiny_en_de", *overrides.split()]))
        assert init_from_problem(str(converted), run_cfg.to_dict()) is None, name
