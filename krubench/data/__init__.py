"""Real data sets: where they live (`paths`), what they are and where they come from (`sources`),
fetching and checking them (`fetch`), and reading them into tensors (`mnist`, `ptb`, `music`).
The `krubench-data` command (`cli`) downloads them ahead of time."""
