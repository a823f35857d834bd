"""tsai-ssl: self-supervised pretraining for tsai classifiers."""
