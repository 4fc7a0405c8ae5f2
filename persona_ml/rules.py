"""LoRA training rules: pure functions over a request, read from ``configs/lora_rules.yaml``.

``check_lora_request`` reports every violation at once (each with ``code``, ``field``, ``limit``,
``actual`` and a message), the defaults it filled in and the credit cost; ``enforce_lora_request``
raises one ``LoraRuleError`` carrying all of them. No torch anywhere in this module's imports.

Example:
    >>> from persona_ml.rules import LoraRequest, check_lora_request
    >>> result = check_lora_request(LoraRequest(plan="pro", num_images=12))
    >>> result.ok, result.request.training_steps, result.credit_cost
    (True, 1000, 500)
    >>> [v.code for v in check_lora_request(LoraRequest(plan="free", num_images=9)).violations]
    ['plan_not_allowed', 'too_few_images']
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._json import bounded, jsonable, short_repr
from .config import config_file, load_config
from .errors import InputError, LoraRuleError

RULES_FILE = "lora_rules.yaml"


# --- config ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CountRange:
    """Inclusive ``[min, max]`` limits for a count (images)."""

    min: int
    max: int

    def __post_init__(self) -> None:
        if self.min < 0 or self.max < self.min:
            raise ValueError(f"need 0 <= min <= max, got min={self.min}, max={self.max}")


@dataclass(frozen=True)
class IntSetting:
    """Inclusive ``[min, max]`` limits and the value used when a request leaves it out."""

    min: int
    max: int
    default: int

    def __post_init__(self) -> None:
        if self.max < self.min or not self.min <= self.default <= self.max:
            raise ValueError(f"need min <= default <= max, got min={self.min}, default={self.default}, "
                             f"max={self.max}")


@dataclass(frozen=True)
class CreditRules:
    """``default_cost`` credits per LoRA, unless ``per_plan`` prices a plan differently."""

    default_cost: int = 500
    per_plan: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = {k: v for k, v in {"default_cost": self.default_cost, **self.per_plan}.items() if v < 0}
        if bad:
            raise ValueError(f"credit costs must be >= 0, got {bad}")

    def cost_for(self, plan: Any) -> int:
        return int(self.per_plan.get(plan, self.default_cost)) if isinstance(plan, str) else self.default_cost


@dataclass(frozen=True)
class BaseModelRules:
    """Allowed base model names, the default, and aliases (public name -> canonical name)."""

    default: str = "flux-dev"
    allowed: tuple[str, ...] = ("flux-dev",)
    aliases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.default not in self.allowed:
            raise ValueError(f"base_models.default {self.default!r} is not in allowed {list(self.allowed)}")
        bad = {k: v for k, v in self.aliases.items() if v not in self.allowed}
        if bad:
            raise ValueError(f"base_models.aliases point at models that are not allowed: {bad}")

    def resolve(self, name: str) -> str | None:
        """Canonical name for ``name`` (itself or via an alias), or ``None`` if not allowed."""
        if name in self.allowed:
            return name
        return self.aliases.get(name)


@dataclass(frozen=True)
class LoraRules:
    """The platform's LoRA training rules (see ``configs/lora_rules.yaml``)."""

    plans_allowed: tuple[str, ...]
    num_images: CountRange
    training_steps: IntSetting
    lora_rank: IntSetting
    credits: CreditRules = field(default_factory=CreditRules)
    base_models: BaseModelRules = field(default_factory=BaseModelRules)


def load_rules(path: str | os.PathLike | None = None) -> LoraRules:
    """Load the rules strictly from ``path`` (default: ``configs/lora_rules.yaml``).

    Raises:
        ConfigError: missing file, unknown key, wrong type or inconsistent limits.
    """
    from .errors import ConfigError

    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"rules path must be a path, got {type(path).__name__}", field="path",
                          value=short_repr(path))
    path = Path(path) if path is not None else config_file(RULES_FILE)
    try:
        key, mtime = str(path.resolve()), (path.stat().st_mtime_ns if path.is_file() else 0)
    except (OSError, ValueError):  # a name over the filesystem's limit, a NUL: read_yaml says what is wrong
        return load_config(LoraRules, path)
    return _load_rules_cached(key, mtime)


@functools.lru_cache(maxsize=8)
def _load_rules_cached(path: str, _mtime: int) -> LoraRules:
    return load_config(LoraRules, path)


# --- request and results --------------------------------------------------------------------------

@dataclass
class LoraRequest:
    """A LoRA training request as the service receives it; values are checked, not trusted.

    Attributes:
        plan: the account's plan (``"pro"``, ``"agency"``, ...).
        num_images: how many training images (accepted ones, after screening).
        training_steps: optimisation steps; ``None`` means the rules' default.
        lora_rank: LoRA rank; ``None`` means the rules' default.
        base_model: base model name or alias (``"fal-ai/flux-lora"``); ``None`` means the default.
        credits: the account's credit balance, checked against the cost when given.
        trigger: the trigger word (free text; not a rule, carried for the trainer).
    """

    plan: Any
    num_images: Any
    training_steps: Any = None
    lora_rank: Any = None
    base_model: Any = None
    credits: Any = None
    trigger: Any = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoraRequest:
        """Build from a JSON-like mapping; ``steps``/``rank`` are accepted as short names.

        Raises:
            InputError: ``data`` is not a mapping, has an unknown key, or lacks ``plan`` or
                ``num_images`` entirely (code ``invalid_input``).
        """
        if not isinstance(data, Mapping):
            raise InputError(f"a LoRA request must be a mapping, got {type(data).__name__}",
                             field="request", value=short_repr(data))
        short = {"steps": "training_steps", "rank": "lora_rank", "images": "num_images"}
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = short.get(key, key)
            if name not in names:
                raise InputError(f"unknown LoRA request field {short_repr(key)} (allowed: {', '.join(sorted(names))})",
                                 field=key if isinstance(key, str) else short_repr(key), value=value)
            if name in kwargs:
                raise InputError(f"LoRA request field {name!r} given twice", field=name, value=value)
            kwargs[name] = value
        missing = [n for n in ("plan", "num_images") if n not in kwargs]
        if missing:
            raise InputError(f"LoRA request lacks {', '.join(missing)}", field=missing[0], value=None)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RuleViolation:
    """One broken rule.

    Attributes:
        code: stable id, e.g. ``too_few_images``, ``steps_too_high``, ``plan_not_allowed``,
            ``base_model_not_allowed``, ``invalid_type``, ``insufficient_credits``.
        field: the request field at fault.
        limit: the limit it broke (a number, a ``[min, max]`` list or the allowed names).
        actual: the value the request had.
        message: a sentence a user can act on.
    """

    code: str
    field: str
    limit: Any
    actual: Any
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "field": self.field, "limit": jsonable(self.limit, fallback=repr),
                "actual": jsonable(self.actual, fallback=repr), "message": self.message}


@dataclass(frozen=True)
class RuleCheckResult:
    """Outcome of ``check_lora_request``.

    Attributes:
        violations: every broken rule, in field order.
        request: the resolved request: defaults filled in, base model alias resolved.
        defaults_filled: field -> value for each field the request left out.
        credit_cost: what this training costs, from the rules config.
        normalized: field -> ``{"from": ..., "to": ...}`` for values rewritten (aliases).
    """

    violations: tuple[RuleViolation, ...]
    request: LoraRequest
    defaults_filled: dict[str, Any]
    credit_cost: int
    normalized: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def codes(self) -> list[str]:
        return [v.code for v in self.violations]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "violations": [v.to_dict() for v in self.violations],
                "request": jsonable(self.request.to_dict(), fallback=repr),
                "defaults_filled": jsonable(self.defaults_filled, fallback=repr),
                "normalized": jsonable(self.normalized, fallback=repr), "credit_cost": self.credit_cost}

    def summary(self) -> str:
        """A few readable lines: OK or each violation, then defaults and cost."""
        lines = ["LoRA request OK" if self.ok else f"LoRA request violates {len(self.violations)} rule(s):"]
        lines += [f"  - [{v.code}] {v.message}" for v in self.violations]
        for name, value in self.defaults_filled.items():
            lines.append(f"  default {name} = {value}")
        for name, change in self.normalized.items():
            lines.append(f"  {name}: {change['from']} -> {change['to']}")
        lines.append(f"  cost: {self.credit_cost} credits")
        return "\n".join(lines)


# --- checks ---------------------------------------------------------------------------------------

def check_lora_request(request: LoraRequest | Mapping[str, Any], rules: LoraRules | None = None) -> RuleCheckResult:
    """Check a LoRA training request against the platform's rules, reporting every violation.

    Args:
        request: a ``LoraRequest`` or a mapping for ``LoraRequest.from_dict``.
        rules: the rules; default ``load_rules()`` (``configs/lora_rules.yaml``).

    Returns:
        RuleCheckResult with all violations (empty when acceptable), the defaults filled in,
        the resolved request and the credit cost.

    Raises:
        InputError: ``request`` is neither a ``LoraRequest`` nor a valid mapping.

    Example:
        >>> check_lora_request({"plan": "pro", "num_images": 31, "steps": 999}).codes
        ['too_many_images', 'steps_too_low']
    """
    if isinstance(request, Mapping):
        request = LoraRequest.from_dict(request)
    if not isinstance(request, LoraRequest):
        raise InputError(f"expected a LoraRequest or a mapping, got {type(request).__name__}",
                         field="request", value=short_repr(request))
    rules = rules or load_rules()
    violations: list[RuleViolation] = []
    defaults: dict[str, Any] = {}
    normalized: dict[str, Any] = {}

    plan = request.plan
    if not isinstance(plan, str):
        violations.append(_type_violation("plan", plan, "a plan name (string)", list(rules.plans_allowed)))
    elif plan not in rules.plans_allowed:
        violations.append(RuleViolation(
            "plan_not_allowed", "plan", list(rules.plans_allowed), plan,
            f"plan {short_repr(plan)} cannot train a LoRA; upgrade to one of: {', '.join(rules.plans_allowed)}"))

    lim = rules.num_images
    n = request.num_images
    if not _is_int(n):
        violations.append(_type_violation("num_images", n, "an integer", [lim.min, lim.max]))
    elif n < lim.min:
        violations.append(RuleViolation(
            "too_few_images", "num_images", lim.min, n,
            f"{n} training image(s); at least {lim.min} are needed: add {lim.min - n} more "
            "distinct photo(s) of the character"))
    elif n > lim.max:
        violations.append(RuleViolation(
            "too_many_images", "num_images", lim.max, n,
            f"{n} training images; at most {lim.max} are allowed: remove {n - lim.max}"))

    steps = _int_setting(request.training_steps, "training_steps", "steps", rules.training_steps,
                         violations, defaults)
    rank = _int_setting(request.lora_rank, "lora_rank", "rank", rules.lora_rank, violations, defaults)

    base = request.base_model
    bm = rules.base_models
    allowed_names = sorted(set(bm.allowed) | set(bm.aliases))
    if base is None:
        base = defaults["base_model"] = bm.default
    elif not isinstance(base, str):
        violations.append(_type_violation("base_model", base, "a model name (string)", allowed_names))
    else:
        canonical = bm.resolve(base)
        if canonical is None:
            violations.append(RuleViolation(
                "base_model_not_allowed", "base_model", allowed_names, base,
                f"base model {short_repr(base)} is not supported; use one of: {', '.join(allowed_names)}"))
        elif canonical != base:
            normalized["base_model"] = {"from": base, "to": canonical}
            base = canonical

    cost = rules.credits.cost_for(plan)
    credits = request.credits
    if credits is not None:
        if not _is_number(credits):
            violations.append(_type_violation("credits", credits, "a finite number", cost))
        elif credits < cost:
            violations.append(RuleViolation(
                "insufficient_credits", "credits", cost, credits,
                f"training a LoRA costs {cost} credits; the account has {credits}"))

    resolved = dataclasses.replace(request, training_steps=steps, lora_rank=rank, base_model=base)
    return RuleCheckResult(violations=tuple(violations), request=resolved, defaults_filled=defaults,
                           credit_cost=cost, normalized=normalized)


def enforce_lora_request(request: LoraRequest | Mapping[str, Any], rules: LoraRules | None = None) -> RuleCheckResult:
    """Like ``check_lora_request`` but raise when any rule is broken.

    Returns:
        The passing ``RuleCheckResult`` (resolved request, defaults filled, cost).

    Raises:
        LoraRuleError: code ``lora_rules_violation``; ``.violations`` holds every
            ``RuleViolation`` and ``details["violations"]`` their dicts.
        InputError: ``request`` is not a request or mapping.
    """
    result = check_lora_request(request, rules)
    if not result.ok:
        raise LoraRuleError("LoRA request violates the rules: " + "; ".join(v.message for v in result.violations),
                            violations=result.violations, codes=result.codes)
    return result


def check_image_count(num_images: int, rules: LoraRules | None = None) -> tuple[RuleViolation, ...]:
    """Only the image-count rule (used by dataset screening, which knows no plan)."""
    rules = rules or load_rules()
    # any plan will do: only the num_images violations are kept (an empty plans_allowed is valid)
    plan = rules.plans_allowed[0] if rules.plans_allowed else ""
    probe = check_lora_request(LoraRequest(plan=plan, num_images=num_images), rules)
    return tuple(v for v in probe.violations if v.field == "num_images")


# --- helpers --------------------------------------------------------------------------------------

#: integers beyond int64 are no count, step or balance (and ``str()`` of a 5000-digit one raises)
_MAX_INT = 2**63 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= _MAX_INT


def _is_number(value: Any) -> bool:
    """A finite int or float (NaN compares false with every limit, so it would pass any check)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) <= _MAX_INT if isinstance(value, int) else math.isfinite(value)


def _type_violation(name: str, value: Any, expected: str, limit: Any) -> RuleViolation:
    huge = isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_INT
    if huge:
        expected += " within int64"
    return RuleViolation("invalid_type", name, limit, short_repr(value) if huge else bounded(value),
                         f"{name} must be {expected}, got {type(value).__name__} {short_repr(value)}")


def _int_setting(value: Any, name: str, short: str, setting: IntSetting, violations: list[RuleViolation],
                 defaults: dict[str, Any]) -> Any:
    if value is None:
        defaults[name] = setting.default
        return setting.default
    if not _is_int(value):
        violations.append(_type_violation(name, value, "an integer", [setting.min, setting.max]))
        return value
    if value < setting.min:
        violations.append(RuleViolation(f"{short}_too_low", name, setting.min, value,
                                        f"{name} {value} is below the minimum {setting.min}"))
    elif value > setting.max:
        violations.append(RuleViolation(f"{short}_too_high", name, setting.max, value,
                                        f"{name} {value} is above the maximum {setting.max}"))
    return value

