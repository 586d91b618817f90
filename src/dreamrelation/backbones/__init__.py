"""The backbone registry (Mochi 1, Wan 2.1 and the toy models) and loading their pipelines / transformers."""
