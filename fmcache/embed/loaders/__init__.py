"""One module per loader family, each exposing ``load(spec, weights, device) -> Encoder``."""
