"""Sizes of the tiny randomly initialised Mochi and Wan models the tests build (never mocks)."""

from dreamrelation.toy.backbone import ToyBackboneConfig

TINY_TRANSFORMER = dict(
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=16,
    pooled_projection_dim=16,  # text width 16 differs from the visual width 32, so transposes would show
    in_channels=12,
    text_embed_dim=32,
    time_embed_dim=16,
    patch_size=2,
    max_sequence_length=16,
)

TINY_WAN = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    rope_max_seq_len=64,
)

#: A tiny toy stack of the Mochi classes (the conftest's tiny bundle)
TINY_MOCHI_TOY = ToyBackboneConfig(
    vae_encoder_channels=[32, 32, 32, 32],
    vae_decoder_channels=[32, 32, 32, 32],
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=16,
    text_dim=32,
    time_embed_dim=16,
)

#: A tiny toy stack of the Wan 2.1 classes (AutoencoderKLWan, WanTransformer3DModel, UMT5EncoderModel)
TINY_WAN_TOY = ToyBackboneConfig(
    architecture="wan",
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=16,
    text_dim=32,
    time_embed_dim=16,
    wan_vae_base_dim=8,
    wan_ffn_dim=64,
)

#: A tiny stack in Wan 2.2 TI2V-5B's configuration (Wan 2.2 VAE: 16x16 / 4x, 48 channels; expand_timesteps)
TINY_WAN22_TOY = ToyBackboneConfig(
    architecture="wan22",
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=16,
    text_dim=32,
    time_embed_dim=16,
    wan_vae_base_dim=8,
    wan_ffn_dim=64,
)


def paper_placement_targets(num_layers: int) -> dict[str, set[str]]:
    """The modules the paper's placement must target on a Mochi transformer, written out by hand."""
    expected: dict[str, set[str]] = {}
    for i in range(num_layers):
        a = f"transformer_blocks.{i}.attn1."
        for name in ("to_q", "to_k", "add_q_proj", "add_k_proj"):
            expected[a + name] = {"relation"}
        for name in ("to_v", "add_v_proj"):
            expected[a + name] = {"subject1", "subject2"}
        expected[a + "to_out.0"] = {"output"}
        if i != num_layers - 1:  # the last block has no text output projection
            expected[a + "to_add_out"] = {"output"}
    return expected
