"""MLflow model URIs as reviewers write them: models:/NAME[/VERSION|@ALIAS][/TARGET], and which of a
version's targets one means. A version the daemon processed for several targets holds one log per
target; a URI that could mean several is refused with the list, never resolved by a silent pick.
"""

from __future__ import annotations

from dataclasses import dataclass

from convrepair.errors import BadInput


@dataclass(frozen=True)
class ModelUri:
    name: str
    version: str | None  # None: an alias, or the whole model (review)
    alias: str | None
    target: str | None


def parse_models_uri(uri: str) -> ModelUri:
    """models:/NAME[/VERSION|@ALIAS][/TARGET] (MLflow model names hold no '/')."""
    rest = uri[len("models:/"):].strip("/")
    head, _, target = rest.partition("/")
    if "@" in head:
        name, _, alias = head.partition("@")
        parsed = ModelUri(name, None, alias, target or None)
    else:
        version, _, target = target.partition("/")
        parsed = ModelUri(head, version or None, None, target or None)
    if not parsed.name or (parsed.alias is not None and not parsed.alias) or "/" in (parsed.target or ""):
        raise BadInput(f"{uri}: not an MLflow model URI (models:/NAME/VERSION[/TARGET], models:/NAME@ALIAS[/TARGET])")
    return parsed


def with_target(uri: str, target: str | None) -> str:
    """URI naming TARGET (the CLI's --target), refused when the URI names another target."""
    if not target:
        return uri
    if not uri.startswith("models:/"):
        raise BadInput(f"{uri}: --target is for models:/ URIs (a runs:/ URI names its target)")
    parsed = parse_models_uri(uri)
    if parsed.target and parsed.target != target:
        raise BadInput(f"{uri} names target {parsed.target}, --target says {target}; give one")
    return uri if parsed.target else uri.rstrip("/") + f"/{target}"


def targets_of(tags: dict[str, str]) -> list[str]:
    """The targets the daemon finished on a version (its `convrepair.<target>.verdict` tags)."""
    return sorted(key[len("convrepair."):-len(".verdict")] for key in tags
                  if key.startswith("convrepair.") and key.endswith(".verdict") and key.count(".") >= 2)


def pick_target(uri: str, where: str, tags: dict[str, str], wanted: str | None) -> str:
    """The one target URI means: the named one, or the only one; several unnamed are refused."""
    targets = targets_of(tags)
    if not targets:
        raise BadInput(f"{uri}: no convrepair results on this version yet (has the daemon processed it? "
                       "`convrepair status` lists its jobs)")
    if wanted is not None:
        if wanted not in targets:
            raise BadInput(f"{uri}: {where} has no results for target {wanted}; it has {', '.join(targets)}")
        return wanted
    if len(targets) > 1:
        raise BadInput(f"{uri}: {where} has {len(targets)} targets ({', '.join(targets)}); name one: "
                       f"{where}/{targets[0]} or --target {targets[0]}")
    return targets[0]
