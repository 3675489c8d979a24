"""The registry itself: every validated entry of one file, and lookup by name and kind."""

from __future__ import annotations

from chatbot.errors import ModelNotFoundError
from chatbot.registry.entries import Kind, ModelEntry, RegistryError


class Registry:
    """All entries of one registry file, validated."""

    def __init__(
        self,
        entries: dict[str, ModelEntry],
        default_model: str | None = None,
        default_embeddings: str | None = None,
        serve: list[str] | None = None,
        source: str = "<memory>",
    ) -> None:
        self.entries = entries
        self.source = source
        self.default_model = default_model or next(
            (e.name for e in entries.values() if e.kind == "chat" and not e.unavailable), None
        )
        self.default_embeddings = default_embeddings or next(
            (e.name for e in entries.values() if e.kind == "embeddings" and not e.unavailable),
            None,
        )
        if serve is None:  # everything that can be served here
            serve = [name for name, e in entries.items() if not e.unavailable]
        for name in serve:  # asked for by name: it must work
            if name in entries and entries[name].unavailable:
                raise RegistryError(f"cannot serve {name!r}: {entries[name].unavailable}")
        self.serve = serve

    def default_name(self, name: str | None, kind: Kind = "chat") -> str | None:
        """`name`, or the registry's default model of that kind when none is given."""
        return name or (self.default_model if kind == "chat" else self.default_embeddings)

    def served_entry(self, name: str | None, kind: Kind | None = "chat") -> ModelEntry:
        """The served entry of that kind (None: any kind, no default), else
        ModelNotFoundError (a 404 over HTTP)."""
        if kind is not None:
            name = self.default_name(name, kind)
        entry = self.entries.get(name or "")
        if entry is None or entry.name not in self.serve or kind not in (None, entry.kind):
            raise ModelNotFoundError(name, kind or "model")
        return entry

    def get(self, name: str | None, kind: Kind = "chat") -> ModelEntry:
        name = self.default_name(name, kind)
        entry = self.entries.get(name or "")
        if entry is None or entry.kind != kind:
            names = sorted(e.name for e in self.entries.values() if e.kind == kind)
            raise KeyError(f"no {kind} model named {name!r} in {self.source} (known: {names})")
        if entry.unavailable:
            raise RegistryError(entry.unavailable)
        return entry

    def served(self, kind: Kind | None = None) -> list[ModelEntry]:
        return [self.entries[n] for n in self.serve if kind is None or self.entries[n].kind == kind]
