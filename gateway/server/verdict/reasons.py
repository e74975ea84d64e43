"""Why a verdict is not plainly fake or real: the catalogue of reason codes, one each.

Every answer that is `uncertain` or `no_face` carries at least one reason; `fake` and `real`
carry the reasons that weakened them (credentials that fail validation, say). gateway/README.md
("Verdicts and their reasons") lists the same catalogue for readers: `tests/test_verdict_rules.py`
checks the two agree. Messages are made here, from facts the rules measured, so that one code
always reads the same way on the page, the CLI, jobs, live analysis and the report.
"""

from dataclasses import dataclass

from gateway.server import schemas


@dataclass(frozen=True)
class Kind:
    """One reason code: whether it makes a verdict `uncertain`, and what it means."""

    code: str
    uncertain: bool  # it makes fake/real `uncertain` (else it only weakens or overrides)
    meaning: str  # the catalogue's sentence, for the docs


CATALOGUE: dict[str, Kind] = {
    k.code: k
    for k in (
        Kind("no_face_found", False, "no face was found in the sampled frames: nothing to judge"),
        Kind(
            "near_threshold",
            True,
            "the video's P(fake) lies within the uncertainty band around the threshold",
        ),
        Kind(
            "groups_disagree",
            True,
            "the vote's specialist groups (rule max_of_groups) disagree by more than the margin",
        ),
        Kind("few_face_frames", True, "faces were found in too few of the sampled frames"),
        Kind(
            "small_faces",
            True,
            "the deciding person's faces are much smaller than the members' input: upscaled",
        ),
        Kind(
            "short_track",
            True,
            "no person is seen long enough to decide alone; a briefly seen one decided",
        ),
        Kind(
            "declared_ai_generated",
            False,
            "valid content credentials declare AI generation: fake whatever the faces score",
        ),
        Kind(
            "credentials_invalid",
            False,
            "the file's content credentials fail validation (e.g. edited after signing)",
        ),
    )
}


def reason(code: str, message: str) -> schemas.Reason:
    """A reason from the catalogue (KeyError for a code it lacks: a code is never made up)."""
    return schemas.Reason(code=CATALOGUE[code].code, message=message)


def makes_uncertain(reasons: list[schemas.Reason]) -> bool:
    return any(CATALOGUE[r.code].uncertain for r in reasons)
