"""Assessment: test images of each checkpoint, likeness against the person and others, quality, scores."""
