"""How files become model input: dataset discovery and validation, decoding, the frame, caches,
and generated data (demo set, synthetic defects, the ELPV importer, the training-set screen)."""
