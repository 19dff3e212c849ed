"""Torch bases shared by the training tests: each is loaded (dequantised by transformers) once per run."""

import hashlib

import pytest


@pytest.fixture(scope="session")
def smollm2_base(model):
    from appliance.training.adapter import load_base

    return load_base(model)


@pytest.fixture(scope="session")
def gemma_model(gemma_gguf):
    """The Gemma file as a verified model (the fixture checked its published SHA-256)."""
    from appliance.trust.builtin import VerifiedModel

    return VerifiedModel("gemma3-270m", 1, gemma_gguf, hashlib.sha256(gemma_gguf.read_bytes()).hexdigest())


@pytest.fixture(scope="session")
def gemma_base(gemma_model):
    from appliance.training.adapter import load_base

    return load_base(gemma_model)
