"""Registries of the classes that checkpoints name: SDEs, networks and training objectives.

A class registers itself when it is defined (from the ``__init_subclass__`` of its base class), under
an explicit name or a default one (:func:`default_name`). A checkpoint records that name and the
class's JSON-able constructor arguments; loading looks the name up in the registry and calls the
class with those arguments. A name read from a file is only ever a key into a registry: nothing is
imported or executed because of it. A class whose module has not been imported is therefore not
found, and :class:`UnregisteredError` says which module to import.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

__all__ = [
    "Registry",
    "UnregisteredError",
    "default_name",
    "is_abstract",
    "is_library_class",
    "check_record",
    "check_arguments",
    "recorded_params",
    "finite_numbers",
    "LIBRARY_PACKAGE",
]

#: classes defined in this package register under their plain class name (the names old checkpoints hold)
LIBRARY_PACKAGE = "scoresde"

T = TypeVar("T")


class UnregisteredError(ValueError):
    """No class is registered under a name read from a configuration (import the module that defines it)."""


def is_library_class(cls: type) -> bool:
    """Whether ``cls`` is defined in this package."""
    module = cls.__module__
    return module == LIBRARY_PACKAGE or module.startswith(LIBRARY_PACKAGE + ".")


def default_name(cls: type) -> str:
    """``cls.__name__`` for the library's own classes, else ``f"{cls.__module__}.{cls.__qualname__}"``."""
    return cls.__name__ if is_library_class(cls) else f"{cls.__module__}.{cls.__qualname__}"


def is_abstract(cls: type) -> bool:
    """Whether ``cls`` has abstract methods left, computed as ``abc.ABCMeta`` does.

    Usable from ``__init_subclass__``, which runs before ``ABCMeta`` sets ``cls.__abstractmethods__``.
    """
    if any(getattr(v, "__isabstractmethod__", False) for v in vars(cls).values()):
        return True
    for base in cls.__bases__:
        for name in getattr(base, "__abstractmethods__", ()):
            if getattr(getattr(cls, name, None), "__isabstractmethod__", False):
                return True
    return False


def check_record(where: str, value: Any, depth: int = 0) -> None:
    """Raise ``TypeError`` unless ``value`` is JSON-like: ``None``, bool, int, float, str, or lists, tuples and
    ``str``-keyed dicts of these (what ``torch.load(weights_only=True)`` and ``json.dumps`` both accept)."""
    if depth > 32:
        raise TypeError(f"{where} is nested more than 32 levels deep")
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_record(f"{where}[{i}]", v, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a key {k!r} that is not a string")
            check_record(f"{where}[{k!r}]", v, depth + 1)
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; a checkpoint records only numbers, strings, booleans, None, "
        "and lists and dicts of these"
    )


def finite_numbers(where: str, value: Any) -> None:
    """Raise ``ValueError`` if a (checked) record holds a NaN or infinite float."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} must be finite, got {value!r}")
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            finite_numbers(f"{where}[{i}]", v)
    elif isinstance(value, dict):
        for k, v in value.items():
            finite_numbers(f"{where}[{k!r}]", v)


def init_signature(cls: type) -> inspect.Signature:
    """The signature of the ``__init__`` that ``cls(...)`` runs (its first parameter is ``self``)."""
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            return inspect.signature(vars(klass)["__init__"])
    raise TypeError(f"{cls!r} has no __init__")  # unreachable: object defines one


def check_arguments(where: str, cls: type, params: dict[str, Any]) -> None:
    """Raise ``TypeError`` unless ``cls(**params)`` binds to the constructor's signature (nothing is called)."""
    try:
        init_signature(cls).bind(None, **params)
    except TypeError as err:
        raise TypeError(
            f"{where} = {sorted(params)} are not arguments of {cls.__qualname__}(...) ({err}); the record must hold "
            "the constructor arguments that rebuild the object"
        ) from None


def recorded_params(obj: Any) -> dict[str, Any]:
    """``obj.params()``, checked to be a JSON-like dict of arguments that rebuild ``type(obj)``.

    Raises ``TypeError`` naming ``<class>.params()`` when it does not return a dict, returns values
    that are not JSON-like (:func:`check_record`), or names arguments the constructor does not take.
    """
    params = obj.params()
    where = f"{type(obj).__qualname__}.params()"
    if not isinstance(params, dict):
        raise TypeError(f"{where} must return a dict of constructor arguments, got {type(params).__name__}")
    check_record(where, params)
    check_arguments(where, type(obj), params)
    return params


class Registry(Mapping[str, type[T]], Generic[T]):
    """A read-only mapping ``name -> class`` of the registered classes of one kind.

    Parameters
    ----------
    kind : str
        What the classes are (``"SDE"``, ``"network"``, ``"objective"``), for messages.
    base : type
        Every registered class is a subclass of it.
    public_name : str
        Where users find this registry (``"scoresde.SDE_REGISTRY"``), for messages.
    loader : callable, optional
        Called once, before the first look-up of a name that is not registered, to import the
        library's own modules that define classes of this kind (a fixed list, never a name from a file).
    """

    def __init__(self, kind: str, base: type[T], public_name: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self.base = base
        self.public_name = public_name
        self._classes: dict[str, type[T]] = {}
        self._loader = loader

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None
            loader()

    # -- Mapping -------------------------------------------------------------------------
    def __getitem__(self, name: str) -> type[T]:
        if name not in self._classes:
            self._load()
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._classes))

    def __len__(self) -> int:
        self._load()
        return len(self._classes)

    def __contains__(self, name: object) -> bool:
        if name not in self._classes:
            self._load()
        return name in self._classes

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self)})"

    # -- registration --------------------------------------------------------------------
    def register(self, cls: type[T], name: str | None = None) -> type[T]:
        """Register ``cls`` under ``name`` (default :func:`default_name`); returns ``cls``.

        Registering a class again under its name is a no-op, and a class with the same module and
        qualified name as the registered one (the same definition run again: a reloaded module, a
        re-run notebook cell) replaces it. Any other clash raises ``TypeError``.
        """
        given: object = cls  # callers may pass anything; checked here
        if not (isinstance(given, type) and issubclass(given, self.base)):
            raise TypeError(f"only subclasses of {self.base.__name__} can be registered as {self.kind}s, got {cls!r}")
        if is_abstract(cls):
            raise TypeError(f"{cls.__qualname__} is abstract; only concrete {self.kind} classes can be registered")
        name = default_name(cls) if name is None else name
        given_name: object = name
        if not isinstance(given_name, str) or not name:
            raise TypeError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        other = self._classes.get(name)
        if other is not None and other is not cls:
            same = (other.__module__, other.__qualname__) == (cls.__module__, cls.__qualname__)
            if not same:
                raise TypeError(
                    f"cannot register {cls.__module__}.{cls.__qualname__} as the {self.kind} {name!r}: that name "
                    f"belongs to {other.__module__}.{other.__qualname__}; choose another name (name=...)"
                )
        for key in [k for k, c in self._classes.items() if c is cls and k != name]:
            del self._classes[key]  # one name per class
        self._classes[name] = cls
        return cls

    def unregister(self, key: str | type[T]) -> type[T]:
        """Remove a class (given by name or as the class) and return it; ``register`` puts it back."""
        name = key if isinstance(key, str) else self.name_of(key)
        if name not in self._classes:
            raise UnregisteredError(f"no {self.kind} is registered under the name {name!r}")
        return self._classes.pop(name)

    def name_of(self, cls: type) -> str:
        """The name ``cls`` is registered under; ``TypeError`` if it is not registered."""
        for name, c in self._classes.items():
            if c is cls:
                return name
        raise TypeError(
            f"the {self.kind} class {cls.__module__}.{cls.__qualname__} is not registered, so it cannot be recorded "
            f"in a checkpoint; subclassing {self.base.__name__} registers a class unless its name starts with an "
            f"underscore or it was defined with register=False or unregistered: {self.public_name}.register(cls) "
            "registers it"
        )

    def lookup(self, name: Any) -> type[T]:
        """The class registered under ``name``; :class:`UnregisteredError` says what to import if there is none."""
        if not isinstance(name, str):
            raise UnregisteredError(f"a {self.kind} name must be a string, got {name!r}")
        if name in self:
            return self._classes[name]
        module = name.rpartition(".")[0]
        hint = f" (for a default name such as this one, the module is {module!r} or a parent of it)" if module else ""
        ours = sorted(k for k, c in self._classes.items() if is_library_class(c))
        theirs = sorted(set(self._classes) - set(ours))
        raise UnregisteredError(
            f"unknown {self.kind} {name!r}; choose one of {ours} or a registered {self.kind} class of your own "
            f"({theirs if theirs else 'none is registered'}); for a class of your own, import the module that "
            f"defines it before loading{hint}: defining the class registers it, and scoresde never imports or runs "
            "code named in a file"
        )
