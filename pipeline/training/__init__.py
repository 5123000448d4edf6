"""Training a LoRA: the trainer, the queued job that trains and assesses, estimates, Ray executor."""
