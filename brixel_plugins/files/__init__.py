"""Files a user passes or receives: upsampler weight files (``upsampler_file``: the format and the one
path from a config value to an upsampler), where a named file is found (``lookup``), training checkpoints
(``checkpoints``: safe reading, training records, what a checkpoint holds of the frozen parts) and
self-contained model files (``export``: the format; the adapters register their builders)."""
