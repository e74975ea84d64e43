"""The tensors between preprocess/'s crops and the models: stated once here,
read by export/ (which names them in every graph and config) and by the gateway
(which sends and requests them).

Every member takes FACES, uint8 [N, H, W, 3] RGB crops of any size, and returns
P_FAKE, float32 [N, 1]; the ensemble returns the vote as P_FAKE and each member's
score as member_output(member). The vote combines the members' scores by one of
VOTE_RULES (model_repository/vote.toml), in the vote's graph and in the gateway alike.
A P_FAKE at or above FAKE_AT (the gateway's default threshold) is fake: is_fake says so for
the gateway's verdict, `make eval` and export/quantize.py's check alike.
"""

INPUT_NAME = "FACES"
OUTPUT_NAME = "P_FAKE"
VOTE_RULES = ("mean", "max_of_groups")
FAKE_AT = 0.5


def is_fake(p_fake: float, threshold: float = FAKE_AT) -> bool:
    """The verdict's cut: a score at or above the threshold is fake."""
    return bool(p_fake >= threshold)


def member_output(member: str) -> str:
    """The ensemble's (and the vote's) output name for one member's score."""
    return f"{OUTPUT_NAME}_{member.upper()}"
