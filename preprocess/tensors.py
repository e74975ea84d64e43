"""The tensors between preprocess/'s crops and the models: stated once here,
read by export/ (which names them in every graph and config) and by the gateway
(which sends and requests them).

Every member takes FACES, uint8 [N, H, W, 3] RGB crops of any size, and returns
P_FAKE, float32 [N, 1]; the ensemble returns the vote as P_FAKE and each member's
score as member_output(member). The vote combines the members' scores by one of
VOTE_RULES (model_repository/vote.toml), in the vote's graph and in the gateway alike.
"""

INPUT_NAME = "FACES"
OUTPUT_NAME = "P_FAKE"
VOTE_RULES = ("mean", "max_of_groups")


def member_output(member: str) -> str:
    """The ensemble's (and the vote's) output name for one member's score."""
    return f"{OUTPUT_NAME}_{member.upper()}"
