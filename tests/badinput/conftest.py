"""Shared fixtures of the bad-input tests."""

from pathlib import Path

import pytest

from _cli_helpers import nuclei_model_file


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """The hand-set nuclei network (see ``_blockwise_helpers``), saved once per module."""
    return nuclei_model_file(tmp_path_factory)
