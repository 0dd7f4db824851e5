"""The one exception type for bad user input (files, folders, config keys)."""

from collections.abc import Callable, Mapping


class InputError(ValueError):
  """Bad input named by file or key, with what to do about it.

  `main.py` prints it as a one-line message and exits with status 2.
  """


def one_line(text: object) -> str:
  """text with every run of whitespace (newlines included) as one space."""
  return " ".join(str(text).split())


def key_checker(section: str, values: Mapping) -> Callable[[bool, str, str], None]:
  """`require(ok, key, what)`: raises InputError "<section>.<key>=<value>: <what>." unless ok."""
  def require(ok: bool, key: str, what: str) -> None:
    if not ok:
      raise InputError(f"{section}.{key}={values[key]!r}: {what}.")
  return require
