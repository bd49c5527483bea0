from typing import Any

class Lane:
    def __init__(
        self,
        hidden_size: int,
        steps: list[tuple[int, int, Any]],
        weights: Any,
        router: tuple[Any, ...],
        probes: list[tuple[Any, ...] | None],
    ) -> None: ...
    def decide(self, row: Any, tau: float) -> Any: ...
    def decide_gated(self, row: Any, tau: float, no_probe: float) -> Any: ...
    def scaled(self, row: Any) -> bytes | None: ...
