"""The one exception type that the command line turns into a single readable message."""


class CasdapError(Exception):
    """A problem with the user's input (data, config, flags, checkpoint): says what and how to fix."""


def yaml_problem(error: Exception) -> str:
    """A YAML parser error as one line: what is wrong and where (PyYAML's own text spans several)."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem
