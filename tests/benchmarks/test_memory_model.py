"""benchmarks/memory_model.py on tiny meta-device architectures: exact parameter counts, activations that grow
with the clip, and modes that shrink what they should."""

from __future__ import annotations

from types import ModuleType

from diffusers import MochiTransformer3DModel
from tiny import TINY_TRANSFORMER


def test_tiny_mochi_counts_and_modes(mm: ModuleType) -> None:
    arch = mm.Arch("tiny", "mochi", {**TINY_TRANSFORMER, "num_layers": 4}, (13, 7), 32, 32, 12, 8, 32)
    result = mm.model_arch(arch)
    real = MochiTransformer3DModel(**arch.config)
    assert result["parameters"]["base"] == sum(p.numel() for p in real.parameters())  # meta == real
    assert result["blocks"] == 4 and result["parameters"]["adapters"] > 0
    big, small = (result["clips"][f] for f in ("13", "7"))
    assert (
        big["activations"]["tokens"] == 3 * 2 * 2 and small["activations"]["tokens"] == 2 * 2 * 2
    )  # 8x, patch 2
    assert big["activations"]["block_saved_max"] > small["activations"]["block_saved_max"] > 0
    modes = big["modes"]
    assert modes["fp8_ckpt_all"]["weights_gb"] < modes["bf16_ckpt_all"]["weights_gb"]
    assert modes["bf16_swap3"]["weights_gb"] < modes["bf16_swap1"]["weights_gb"]
    assert modes["fsdp4"]["weights_gb"] < modes["fsdp2"]["weights_gb"] < modes["bf16_ckpt_all"]["weights_gb"]
    assert modes["fsdp2"]["activations_gb"] == modes["bf16_ckpt_all"]["activations_gb"]
    assert big["swap_for_24gb"] == {"bf16": 0, "fp8": 0}  # a tiny model fits anywhere
    assert "tiny" in mm.table(result)


def test_block_inputs_are_counted_for_every_block(mm: ModuleType) -> None:
    """Each block's own inputs count once per block and shared ones once: the sum grows exactly linearly
    with depth, by at least the visual hidden states (tokens x width, bf16) per block. (The counter holds
    every input it saw: keyed by ``id`` alone, a freed input's id could be taken by a later block's input,
    which then went uncounted - full-size sums varied by up to 4 % between runs; at this size ids happen not
    to be reused, so this checks the counting, not that race.)"""

    def inputs_sum(layers: int) -> int:
        arch = mm.Arch("tiny", "mochi", {**TINY_TRANSFORMER, "num_layers": layers}, (13,), 32, 32, 12, 8, 32)
        model = mm.build_meta(arch)
        blocks = model.transformer_blocks
        return mm.activations(model, blocks, arch, 13)["block_inputs_sum"]

    two, four, eight = (inputs_sum(n) for n in (2, 4, 8))
    per_block = (four - two) // 2
    assert eight - four == 4 * per_block
    width = TINY_TRANSFORMER["num_attention_heads"] * TINY_TRANSFORMER["attention_head_dim"]
    assert per_block >= 3 * 2 * 2 * width * 2  # 12 tokens x width x 2 bytes
