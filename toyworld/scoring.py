"""What a drawn image got right, against the ``(colour, shape)`` subjects its prompt asked for.

Subjects are matched to detected objects one to one (each object stands for at most one subject), so "a red
circle and a blue circle" needs two circles. Outcomes of one image:

* ``all_present``: every subject drawn with its colour and its shape.
* ``neglect``: some subject's shape (the noun, the token the guidance excites) appears nowhere: catastrophic
  neglect, whatever the colours.
* ``subject_absent``: some subject has no object of its own, neither of its colour nor of its shape: nothing was
  drawn for it (the strict sense of neglect; a subject drawn in the other one's shape counts under ``neglect`` but
  not here).
* ``colour_missing``: some subject's colour appears nowhere.
* ``binding_error``: every subject's shape is there, but not every subject with its own colour (a colour swapped
  with or leaked from another subject).
* ``extra_objects``: more objects than subjects (a duplicate, a third shape, a stray blob).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import permutations

from .detect import Detection

Subject = tuple[str, str]  # (colour, shape)


@dataclass(frozen=True)
class Outcome:
    all_present: bool
    neglect: bool
    subject_absent: bool
    colour_missing: bool
    binding_error: bool
    extra_objects: bool
    objects: int

    def as_dict(self) -> dict:
        return asdict(self)


def matched(subjects: Sequence[Subject], found: Sequence[Detection],
            fits: Callable[[Subject, Detection], bool]) -> int:
    """The most subjects that distinct detections can stand for, under ``fits`` (a brute-force assignment)."""
    if not subjects or not found:
        return 0
    slots = list(range(len(found))) + [None] * len(subjects)
    best = 0
    for assignment in permutations(slots, len(subjects)):
        best = max(best, sum(index is not None and fits(subject, found[index])
                             for subject, index in zip(subjects, assignment)))
        if best == len(subjects):
            break
    return best


def score(subjects: Sequence[Subject], found: Sequence[Detection]) -> Outcome:
    count = len(subjects)
    exact = matched(subjects, found, lambda s, d: d.colour == s[0] and d.shape == s[1])
    shapes = matched(subjects, found, lambda s, d: d.shape == s[1])
    colours = matched(subjects, found, lambda s, d: d.colour == s[0])
    either = matched(subjects, found, lambda s, d: d.colour == s[0] or d.shape == s[1])
    return Outcome(
        all_present=exact == count,
        neglect=shapes < count,
        subject_absent=either < count,
        colour_missing=colours < count,
        binding_error=shapes == count and exact < count,
        extra_objects=len(found) > count,
        objects=len(found),
    )
