"""Planning: presets, network topology and per-view plans from the dataset fingerprint."""
