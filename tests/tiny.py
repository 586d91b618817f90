"""Sizes of the tiny randomly initialised Mochi transformers the tests build (never mocks)."""

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
