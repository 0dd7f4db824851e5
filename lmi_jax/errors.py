"""The one exception type for bad user input (files, folders, config keys)."""


class InputError(ValueError):
  """Bad input named by file or key, with what to do about it.

  `main.py` prints it as a one-line message and exits with status 2.
  """


def one_line(text: object) -> str:
  """text with every run of whitespace (newlines included) as one space."""
  return " ".join(str(text).split())
