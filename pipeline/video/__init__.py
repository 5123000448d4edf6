"""Video clips of the person and their likeness frame by frame."""
