"""Reading typed values from the environment: the one reader every setting goes through."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["EnvironmentReader", "SettingsError"]


class SettingsError(ValueError):
    """An environment variable holds a value the router cannot use."""


class EnvironmentReader:
    """Reads typed values from an environment, naming the variable in every error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def raw(self, name: str) -> str:
        return self._env.get(name, "")

    def names(self, prefix: str) -> list[str]:
        """The variables set whose names start with ``prefix`` (for per-client families like BUDGET_<NAME>)."""
        return sorted(name for name in self._env if name.startswith(prefix))

    def text(self, name: str, default: str) -> str:
        value = self.raw(name).strip()
        return value or default

    def items(self, name: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.raw(name).split(",") if part.strip())

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in allowed:
            raise SettingsError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        return value

    def number(self, name: str, default: float, minimum: float = 0.001) -> float:
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number of seconds; got {raw!r}") from None
        if not value >= minimum or value == float("inf"):
            raise SettingsError(f"{name} must be a finite number >= {minimum}; got {raw!r}")
        return value

    def optional_number(self, name: str) -> float | None:
        """A number of seconds, or None when the variable is unset or empty (the feature is off)."""
        return self.number(name, 0.0) if self.text(name, "") else None

    def integer(self, name: str, default: int, minimum: int) -> int:
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number; got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be >= {minimum}; got {raw!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.text(name, "").lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name} must be true or false; got {raw!r}")
