import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minireason  # noqa: E402
from algorithms import models  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "exercise(name): a test of that classroom exercise (tests/exercises.py)")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A freshly initialised tiny char-level LLaMA (the default model's config) and its tokenizer."""
    path = tmp_path_factory.mktemp("tiny")
    models.build_tiny_model(path, minireason.TINY_MODEL)
    return minireason.load_model(str(path), path, "cpu")
