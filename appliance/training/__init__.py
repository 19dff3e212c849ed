"""Training Takens-LoRA overlays (build-station side): dataset, examples, adapter, objective, terms, trainer."""
