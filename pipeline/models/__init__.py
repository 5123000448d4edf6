"""Base models: loading FLUX.1-dev and the embedded tiny and micro models, devices, memory, LoRA files."""
