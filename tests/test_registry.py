"""Registry: exact parameter counts of MODELS.md, composition of changes, errors."""

import pytest
import torch
from torch import nn

from bench.profiling.params import model_param_rows
from variants.bands import BandSplit
from variants.config import ModelConfig
from variants.discriminator import Discriminator
from variants.errors import MbsbenchError
from variants.layers import BiMambaBlock, DualMagPhaseDecoder, MambaBlock, MaskDecoder3Tap
from variants.registry import (
    CHANGES,
    OPTIMIZED,
    ORIGINAL,
    apply_change,
    build_config,
    count_params,
    list_variants,
    parse_overrides,
    resolve,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


MODELS_MD_TOTALS = {
    "original": 7_325_830,
    "optimized": 2_139_920,
    "optimized_a": 3_953_168,
    "bsrnn": 2_963_024,
    "original_seed": 7_325_830,
    "optimized_seed": 2_139_920,
    # computed from the parts in MODELS.md (70,788 + 244,864 + 2 x 16,512 + 4,374,530); verified here
    "optimized_design": 4_723_206,
}


@pytest.mark.parametrize("name,expected", MODELS_MD_TOTALS.items())
def test_registered_totals(name: str, expected: int) -> None:
    assert count_params(resolve(name)) == expected


def test_total_on_real_device_matches_meta() -> None:
    assert n_params(build_config_model("optimized")) == 2_139_920


@pytest.mark.parametrize("name", ["original", "optimized_a", "bsrnn", "original+mask_decoder", "optimized-band_mlp"])
def test_counting_without_weight_fills_matches_a_built_model(name: str) -> None:
    """count_params skips the init fills (values are never read): the count is still the built model's."""
    from variants.registry import _count_params

    torch.manual_seed(0)
    model = build_config_model(name)
    _count_params.cache_clear()
    assert count_params(resolve(name)) == n_params(model)
    torch.manual_seed(0)
    again = build_config_model(name)  # the fills run again outside the count
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))


def build_config_model(name: str) -> nn.Module:
    from variants.registry import build

    return build(name)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ({}, 120_832),
        ({"bidirectional_time": True}, 120_832),
        ({"expand": 1, "d_state": 12}, 56_960),
        ({"expand": 1, "d_state": 16}, 58_496),
    ],
)
def test_mamba_block_sizes(overrides: dict, expected: int) -> None:
    assert n_params(MambaBlock(ModelConfig(**overrides))) == expected


def test_bidirectional_block() -> None:
    assert n_params(BiMambaBlock(ModelConfig())) == 274_816


@pytest.mark.parametrize("channels,expected", [(128, 70_788), (64, 35_908)])
def test_band_split(channels: int, expected: int) -> None:
    assert n_params(BandSplit(ModelConfig().band_widths, channels)) == expected


@pytest.mark.parametrize("hidden,expected", [(4, 3_637_516), (2, 1_824_268)])
def test_mask_decoder(hidden: int, expected: int) -> None:
    assert n_params(MaskDecoder3Tap(ModelConfig(decoder="mask3tap", decoder_hidden=hidden))) == expected


def test_dual_decoder() -> None:
    assert n_params(DualMagPhaseDecoder(ModelConfig())) == 4_374_530


def test_discriminator() -> None:
    assert n_params(Discriminator(ndf=16)) == 181_650


def test_original_parts_table() -> None:
    rows = {r.module: r.params for r in model_param_rows(ORIGINAL)}
    assert rows["band_split"] == 70_788
    # each branch: encoder 1,374,336 + output net 65,920 = 1,440,256 (MODELS.md)
    assert rows["encoders.0"] + rows["heads.0"] == 1_440_256
    assert rows["decoder"] == 4_374_530
    assert rows["(total)"] == 7_325_830


def test_optimized_encoder_parts() -> None:
    rows = {r.module: r.params for r in model_param_rows(OPTIMIZED)}
    assert rows["encoders.0"] == 244_864
    assert rows["encoders.0.band_mixer"] == 16_768


def test_original_plus_all_changes_is_optimized() -> None:
    cfg = ORIGINAL
    for change in CHANGES:
        cfg = apply_change(cfg, change)
    assert cfg == OPTIMIZED
    assert resolve("original+" + "+".join(CHANGES)) == resolve("optimized")


def test_optimized_minus_all_changes_is_original() -> None:
    assert resolve("optimized-" + "-".join(CHANGES)) == resolve("original")


def test_changes_compose() -> None:
    cfg = resolve("original+expand1+d_state12")
    assert (cfg.expand, cfg.d_state, cfg.encoder) == (1, 12, "two_branch")


def test_list_has_sixteen_single_changes() -> None:
    assert len(list_variants("original+*")) == 8
    assert len(list_variants("optimized-*")) == 8


def test_seed_variants_carry_the_bug_flags() -> None:
    assert resolve("original_seed").dt_bias_init == "zeroed"
    seed = resolve("optimized_seed")
    assert (seed.skip_d, seed.dt_bias_init, seed.scan_clamps) == ("const_d_inner", "zeroed", "seed")
    assert ORIGINAL.skip_d == "learned" and ORIGINAL.scan_clamps == "none"


@pytest.mark.parametrize(
    "name,fragment",
    [
        ("orignal", "did you mean 'original'"),
        ("original+expand2", "did you mean 'expand1'"),
        ("optimized+expand1", "did you mean '-expand1'"),
        ("bsrnn+expand1", "applies to MBS-Net"),
        ("original+", "needs a change name"),
    ],
)
def test_bad_names(name: str, fragment: str) -> None:
    with pytest.raises(MbsbenchError, match=fragment):
        resolve(name)


def test_overrides_are_typed() -> None:
    parsed = parse_overrides(["d_state=12", "bidirectional_time=false", "scan=chunked", "chunk_size=64"])
    assert parsed == {"d_state": 12, "bidirectional_time": False, "scan": "chunked", "chunk_size": 64}
    assert build_config("optimized", **parsed).chunk_size == 64


@pytest.mark.parametrize(
    "item,fragment",
    [
        ("dstate=12", "unknown field 'dstate'; did you mean 'd_state'"),
        ("d_state=twelve", "d_state='twelve': expected an integer"),
        ("bidirectional_time=maybe", "expected true or false"),
        ("d_state", "expected key=value"),
    ],
)
def test_bad_overrides(item: str, fragment: str) -> None:
    with pytest.raises(MbsbenchError, match=fragment):
        parse_overrides([item])


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        ({"scan": "fast"}, "scan='fast' is not one of"),
        ({"d_state": 0}, "d_state=0 must be a positive integer"),
        ({"band_widths": (2, 3)}, "band_widths sum to 5"),
    ],
)
def test_config_validation(overrides: dict, fragment: str) -> None:
    with pytest.raises(MbsbenchError, match=fragment):
        build_config("original", **overrides)


def test_none_overrides_do_not_shadow() -> None:
    assert build_config("optimized", d_state=None).d_state == 12


def test_meta_build_allocates_nothing() -> None:
    with torch.device("meta"):
        model = build_config_model("original")
    assert all(p.is_meta for p in model.parameters())


def test_optimized_names_its_eight_changes() -> None:
    """Defect 4: optimized is the eight named changes, not whatever CHANGES holds; the tables agree."""
    from dataclasses import replace

    from variants.config import CHOICES
    from variants.registry import CHANGE_TEXT, OPTIMIZED_CHANGES, PROPOSED, apply_changes
    from variants.scan import SCANS

    assert OPTIMIZED_CHANGES == ("chunked_scan", "expand1", "unidirectional", "shared_encoder", "band_mlp",
                                 "d_state12", "no_output_net", "mask_decoder")
    assert set(PROPOSED) < set(OPTIMIZED_CHANGES) and set(OPTIMIZED_CHANGES) == set(CHANGES) == set(CHANGE_TEXT)
    assert apply_changes(ORIGINAL, OPTIMIZED_CHANGES) == OPTIMIZED
    assert set(CHOICES["scan"]) - {"auto"} == set(SCANS)
    for change, fields in CHANGES.items():
        for pick in (0, 1):  # both ends of every delta are valid configs, and differ from each other
            cfg = replace(ORIGINAL, **{f: values[pick] for f, values in fields.items()})
            assert all(getattr(cfg, f) == values[pick] for f, values in fields.items()), change
        assert all(values[0] != values[1] for values in fields.values()), change
        # a change added to CHANGES but not to OPTIMIZED_CHANGES fails here instead of redefining optimized
        assert all(values[0] == getattr(ORIGINAL, f) and values[1] == getattr(OPTIMIZED, f)
                   for f, values in fields.items()), change
