"""DreamRelation: relation-centric video customization on Mochi-architecture video diffusion transformers."""

__version__ = "0.1.0"
