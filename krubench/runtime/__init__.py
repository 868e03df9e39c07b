"""What a run does besides training: its folder and lock, checkpoints, the status and results files, signals,
the memory estimate, TensorBoard, the CSV mirror and the experiment trackers."""
