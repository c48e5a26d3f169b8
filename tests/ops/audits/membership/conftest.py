"""Fixtures of the membership audit tests: synthetic sets whose leakage is known by construction."""

from __future__ import annotations

import pytest
from membership_sets import overfit_segmentation_set, overfit_set

from instahide_ops.audits.membership import MembershipData


@pytest.fixture(scope="session")
def overfit() -> MembershipData:
    """2,000 classified examples with 8 reference models; LiRA wins at low FPR by construction."""
    return overfit_set()


@pytest.fixture(scope="session")
def overfit_segmentation() -> MembershipData:
    """80 segmented examples (4 classes, 12 x 12, some pixels ignored) with 8 reference models."""
    return overfit_segmentation_set()
