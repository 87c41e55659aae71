"""The engine's errors: a stable code each (the service's problem types), and every problem found in the message."""

from gif import errors


def test_each_error_has_its_own_code_and_names_every_problem():
    kinds = errors.GifError.__subclasses__()
    codes = [kind.code for kind in kinds]
    assert len(kinds) >= 8 and len(set(codes)) == len(codes) and errors.GifError.code not in codes
    problems = ["a: missing", "b: NaN"]
    error = errors.InvalidWeightsError("the weights do not match", problems)
    problems.append("later")
    assert str(error) == "the weights do not match: a: missing; b: NaN" and error.problems == problems[:2]
    assert str(errors.TooLargeError("over the limit")) == "over the limit"
