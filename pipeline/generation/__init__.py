"""Drawing images with a base model and a LoRA."""
