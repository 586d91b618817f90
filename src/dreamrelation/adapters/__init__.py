"""The relation LoRA triplet on PEFT (triplet), the one adapter-file writer/reader, LoRA interop."""
