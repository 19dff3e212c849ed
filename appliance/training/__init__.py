"""Training Takens-LoRA overlays (build-station side): dataset, objective, trainer."""
