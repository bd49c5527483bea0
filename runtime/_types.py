"""The parts of a bundle the runtime uses, as structural types."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class BundleLike(Protocol):
    @property
    def manifest(self) -> Any: ...

    @property
    def domains(self) -> Sequence[str]: ...

    def decide(self, hidden: np.ndarray) -> Any: ...

    def steering_vector(self, domain: str | int) -> np.ndarray: ...
