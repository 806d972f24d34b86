"""One module per method; each exposes apply(model, recipe, calibration) -> Quantized."""
