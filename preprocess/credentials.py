"""Content credentials (C2PA) an upload carries: who signed it, what it declares, and whether
the signature still holds, read with the C2PA library (c2pa-python, c2pa-rs underneath).

Only formats the gateway accepts and C2PA defines for them are read (JPEG, PNG, WebP, MP4,
MOV): the other containers never reach the parser. Reading is offline (no remote manifest, no
OCSP) and never fails the upload: a file the library cannot parse, or whose manifest it cannot
read, carries no credentials as far as the answer goes, since a missing manifest never makes a
verdict (stripping one is always possible). A manifest read whose signature or hashes fail is
`invalid`, with the library's failure codes. Trust is the caller's: without trust anchors no
credentials are ever `trusted`, only `valid`.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import c2pa

log = logging.getLogger(__name__)

# The sniffed format (preprocess.media.sniff) -> the MIME type C2PA reads it as.
MIME_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "mp4": "video/mp4",
    "mov": "video/quicktime",
}
# IPTC digital source types that declare generative AI (the IRI's last segment).
AI_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"})
ACTIONS_LABELS = frozenset({"c2pa.actions", "c2pa.actions.v2"})
# A hostile manifest may hold any number of actions and any length of text: the answer keeps
# a bounded part of it (ai_generated is still computed over every action).
MAX_ACTIONS = 32
MAX_TEXT = 200
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
STATES: dict[str, "State"] = {"Invalid": "invalid", "Valid": "valid", "Trusted": "trusted"}

State = Literal["invalid", "valid", "trusted"]


@dataclass(frozen=True)
class Action:
    """One action of the active manifest: `c2pa.created`, `c2pa.edited`…"""

    action: str
    digital_source_type: str | None  # an IPTC IRI: …/digitalCapture, …/trainedAlgorithmicMedia


@dataclass(frozen=True)
class ContentCredentials:
    """What the active manifest says, and how far the library's validation got."""

    state: State
    signer: str | None  # the signing certificate's common name
    issuer: str | None  # its issuer's organisation
    claim_generator: str | None  # the software that wrote the manifest, with its version
    created: str | None  # the `c2pa.created` action's time, else the signature's time stamp
    actions: tuple[Action, ...]
    ai_generated: bool  # an action declares trainedAlgorithmicMedia or its composite
    failures: tuple[str, ...]  # the library's failure codes (empty unless invalid)


@dataclass(frozen=True)
class CredentialPolicy:
    """How credentials are validated: trust anchors (a PEM bundle's text) or none."""

    trust_anchors: str | None = None

    def library_settings(self) -> dict[str, Any]:
        # Never the network: an upload must not make the gateway fetch a URL it names.
        verify: dict[str, Any] = {"remote_manifest_fetch": False, "ocsp_fetch": False}
        if not self.trust_anchors:
            # No anchors of ours: none of the library's either, so `valid` at most.
            return {"verify": verify | {"verify_trust": False}}
        return {"verify": verify, "trust": {"trust_anchors": self.trust_anchors}}

    def check(self) -> None:
        """Raise ValueError when the library refuses these settings (a bad PEM bundle), or
        when anchors were given that hold no certificate at all."""
        if self.trust_anchors is not None and PEM_CERTIFICATE not in self.trust_anchors:
            raise ValueError("content credentials' trust anchors: no PEM certificate found")
        try:
            c2pa.Context.from_dict(self.library_settings()).close()
        except c2pa.C2paError as error:
            raise ValueError(f"content credentials' trust anchors refused: {error}") from None


UNTRUSTED = CredentialPolicy()  # no trust anchors: `valid` at most


def read_credentials(path: Path, fmt: str, policy: CredentialPolicy) -> ContentCredentials | None:
    """The credentials of the file at `path` (sniffed as `fmt`), or None when it carries none
    the library can read. Never raises for what the file holds."""
    mime = MIME_TYPES.get(fmt)
    if mime is None:
        return None
    try:
        with (
            c2pa.Context.from_dict(policy.library_settings()) as context,
            Path(path).open("rb") as stream,
        ):
            reader = c2pa.Reader.try_create(mime, stream, None, context)
            if reader is None:  # no manifest at all
                return None
            with reader:
                return _credentials(json.loads(reader.json()))
    except (c2pa.C2paError, ValueError, TypeError, KeyError) as error:
        # A manifest the library cannot parse is one it cannot vouch for either.
        log.info("content credentials unreadable: %s", str(error)[:MAX_TEXT])
        return None


def _credentials(store: dict[str, Any]) -> ContentCredentials | None:
    manifests = store.get("manifests")
    active = manifests.get(store.get("active_manifest")) if isinstance(manifests, dict) else None
    state = STATES.get(store.get("validation_state"))
    if not isinstance(active, dict) or state is None:
        return None
    actions = _actions(active)
    signature = _mapping(active.get("signature_info"))
    return ContentCredentials(
        state=state,
        signer=_text(signature.get("common_name")),
        issuer=_text(signature.get("issuer")),
        claim_generator=_generator(active),
        created=_created(actions, signature),
        actions=tuple(Action(_text(a.get("action")) or "", _source(a)) for a in actions)[
            :MAX_ACTIONS
        ],
        ai_generated=any(_is_ai(_source(a)) for a in actions),
        failures=_failures(store) if state == "invalid" else (),
    )


def _actions(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every action of the manifest's actions assertions (`c2pa.actions`, `.v2`, `__2`…)."""
    found = []
    for assertion in _list(manifest.get("assertions")):
        assertion = _mapping(assertion)
        label = str(assertion.get("label", "")).split("__")[0]
        if label in ACTIONS_LABELS:
            found += [_mapping(a) for a in _list(_mapping(assertion.get("data")).get("actions"))]
    return found


def _source(action: dict[str, Any]) -> str | None:
    return _text(action.get("digitalSourceType"))


def _is_ai(source_type: str | None) -> bool:
    return source_type is not None and source_type.rstrip("/").rsplit("/", 1)[-1] in (
        AI_SOURCE_TYPES
    )


def _created(actions: list[dict[str, Any]], signature: dict[str, Any]) -> str | None:
    for action in actions:
        if action.get("action") == "c2pa.created" and (when := _text(action.get("when"))):
            return when
    return _text(signature.get("time"))


def _generator(manifest: dict[str, Any]) -> str | None:
    """`name/version` of the first claim_generator_info (claims v2), else claim_generator."""
    infos = _list(manifest.get("claim_generator_info"))
    if infos and (name := _text(_mapping(infos[0]).get("name"))):
        version = _text(_mapping(infos[0]).get("version"))
        return f"{name}/{version}" if version else name
    return _text(manifest.get("claim_generator"))


def _failures(store: dict[str, Any]) -> tuple[str, ...]:
    results = _mapping(_mapping(store.get("validation_results")).get("activeManifest"))
    codes = (_text(_mapping(f).get("code")) for f in _list(results.get("failure")))
    return tuple(dict.fromkeys(c for c in codes if c))[:MAX_ACTIONS]


def _text(value: object) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) and value else None


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
