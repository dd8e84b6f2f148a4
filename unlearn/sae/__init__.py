"""SAEs: the SAE module, on-disk formats, release registry, training, activations, quality."""
