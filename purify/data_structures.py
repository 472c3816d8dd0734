"""Working with params and state: ``{module_path: {name: value}}`` dicts (Haiku's
``hk.data_structures``, the same functions and results, on plain dicts).

Example::

    trainable, frozen = purify.data_structures.partition(
        lambda module, name, value: module.startswith("head"), params)
    params = purify.data_structures.merge(trainable, frozen)
"""
from __future__ import annotations

import builtins
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np

Tree = Mapping[str, Mapping[str, Any]]


def traverse(structure: Tree) -> Iterator[tuple[str, str, Any]]:
  """``(module, name, value)`` for every entry, modules and names in sorted order."""
  for module in sorted(structure):
    entries = structure[module]
    for name in sorted(entries):
      yield module, name, entries[name]


def _build(items) -> dict:
  out: dict = {}
  for module, name, value in items:
    out.setdefault(module, {})[name] = value
  return out


def partition_n(fn: Callable[[str, str, Any], int], structure: Tree, n: int) -> tuple:
  """``n`` new structures; entry ``(module, name, value)`` goes to number
  ``fn(module, name, value)`` (in ``[0, n)``)."""
  buckets: list = [[] for _ in range(n)]
  for module, name, value in traverse(structure):
    i = fn(module, name, value)
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < n:
      raise ValueError(f"partition_n: fn returned {i!r} for {module}/{name}; it must "
                       f"return an int in [0, {n}).")
    buckets[i].append((module, name, value))
  return tuple(_build(b) for b in buckets)


def partition(predicate: Callable[[str, str, Any], bool], structure: Tree) -> tuple[dict, dict]:
  """``(entries where predicate(module, name, value), the others)``: new dicts."""
  return partition_n(lambda m, n, v: 0 if predicate(m, n, v) else 1, structure, 2)


def filter(predicate: Callable[[str, str, Any], bool], structure: Tree) -> dict:  # noqa: A001
  """The entries for which ``predicate(module, name, value)`` holds: a new dict."""
  return _build(e for e in traverse(structure) if predicate(*e))


def map(fn: Callable[[str, str, Any], Any], structure: Tree) -> dict:  # noqa: A001
  """Every entry's value replaced by ``fn(module, name, value)``: a new dict."""
  return _build((m, n, fn(m, n, v)) for m, n, v in traverse(structure))


def merge(*structures: Tree, check_duplicates: bool = False) -> dict:
  """One structure with the entries of all; a later structure's entry wins. With
  ``check_duplicates``, an entry in two structures with different shapes or dtypes
  raises ``ValueError`` naming it."""
  def shaped(v):
    return (tuple(np.shape(v)), np.dtype(v.dtype)) if hasattr(v, "dtype") else None
  out: dict = {}
  for structure in structures:
    for module, name, value in traverse(structure):
      entries = out.setdefault(module, {})
      if check_duplicates and name in entries and shaped(entries[name]) != shaped(value):
        raise ValueError(f"merge: {module}/{name} is in two structures with different "
                         f"shapes/dtypes: {shaped(entries[name])} and {shaped(value)}.")
      entries[name] = value
  return out


def is_subset(*, subset: Tree, superset: Tree) -> bool:
  """Whether every ``(module, name)`` of ``subset`` is in ``superset``."""
  have = {(m, n) for m, n, _ in traverse(superset)}
  return builtins.all((m, n) in have for m, n, _ in traverse(subset))


def tree_size(tree) -> int:
  """How many elements the arrays of ``tree`` hold (a model's parameter count)."""
  return sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(tree))


def tree_bytes(tree) -> int:
  """How many bytes the arrays of ``tree`` hold (at least: devices may pad)."""
  return sum(int(np.size(x)) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


def to_mutable_dict(structure: Tree) -> dict:
  """A copy as plain nested dicts (purify's params already are)."""
  return {m: dict(entries) for m, entries in structure.items()}


to_haiku_dict = to_mutable_dict
to_immutable_dict = to_mutable_dict
