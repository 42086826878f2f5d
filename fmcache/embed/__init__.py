"""The torch stage: model registry and loaders, preprocessing, the encode loop."""
