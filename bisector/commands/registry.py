"""Every command by name: how ``resume`` (and the coming daemon) rebuilds a session's command from
its ``session.json``."""

from __future__ import annotations

from typing import Any

from bisector.commands.base import Command
from bisector.errors import UserError


def command_types() -> dict[str, type[Command]]:
    from bisector.commands.build import BuildCommand
    from bisector.commands.build_confirm import ConfirmCommand
    from bisector.commands.precision import PrecisionCommand
    from bisector.commands.reduce import ReduceCommand
    from bisector.commands.repeat import RepeatCommand

    return {c.name: c for c in (ReduceCommand, PrecisionCommand, RepeatCommand, BuildCommand, ConfirmCommand)}


def command_from_json(doc: dict[str, Any]) -> Command:
    types = command_types()
    name = doc.get("name") if isinstance(doc, dict) else None
    if name not in types:
        raise UserError(f"the session's command {name!r} is not one this bisector knows",
                        hint=f"known: {', '.join(types)}")
    return types[name].from_json(doc)
