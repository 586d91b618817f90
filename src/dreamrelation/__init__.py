"""DreamRelation: relation-centric video customization on Mochi 1 and Wan 2.1 video diffusion transformers."""

__version__ = "0.1.0"
