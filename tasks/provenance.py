"""C2PA content credentials: signing a bundle's PNG, WAV and MP4 files, and reading them back.

With GENBUNDLE_C2PA_CERT and GENBUNDLE_C2PA_KEY set, every asset gets a signed C2PA manifest
(c2pa-python) saying how it was made: a generation is `c2pa.created` by its engine with the IPTC
digital source type trainedAlgorithmicMedia; a file made from others (the titled cover, the
normalised sound, the muxed clip, the poster, the trace pictures) is `c2pa.opened` from its signed
source, which it carries as an ingredient, then `c2pa.edited`. Each manifest also holds the engine,
weights, licence and seed (`org.genbundle.generation`). Without a certificate the assets stay
unsigned and the bundle manifest says so.

Signing is offline (no timestamp authority), so a reader checks the certificate's validity at read
time: a file reads Invalid once its certificate has expired.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks.brief import BriefError
from tasks.files import atomic_path, sha256_file
from tasks.logs import run_logger
from tasks.manifest import DISCLOSURE
from tasks.settings import get_settings
from tasks.workspace import StepResult

if TYPE_CHECKING:
    from tasks.catalogue import BundleFile
    from tasks.generation import Generated
    from tasks.workspace import Workspace

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED = IPTC + "trainedAlgorithmicMedia"
COMPOSITE = IPTC + "compositeWithTrainedAlgorithmicMedia"
ALGORITHMIC = IPTC + "algorithmicMedia"  # made by an algorithm alone: the noise-schedule chart
GENERATION_LABEL = "org.genbundle.generation"
SIGNABLE = {".png": "image/png", ".wav": "audio/wav", ".mp4": "video/mp4"}
UNTRUSTED = "signingCredential.untrusted"  # expected when the reader is given no trust anchors

# role -> (parent it is opened from, component placed in it, what the edit did, digital source type)
DERIVED = {
    "cover_titled": ("cover", None, "title, tagline and author typeset onto the art", COMPOSITE),
    "sound": ("sound_raw", None, "resampled to 48 kHz, loudness-normalised and peak-limited", TRAINED),
    "video_with_sound": ("video", "sound", "the sound muxed onto the clip as AAC", COMPOSITE),
    "poster": ("video", None, "a frame of the clip", TRAINED),
    "trace_forward": ("cover", None, "the cover noised by the model's schedule and decoded by its VAE", TRAINED),
    "trace_reverse": ("cover", None, "the latents of the cover's denoising steps, decoded by its VAE", TRAINED),
}


class SigningSettingError(BriefError):
    """A signing setting is wrong: like a bad brief, it stops the run (exit 2) before any model loads."""


@dataclass(frozen=True)
class SigningKey:
    cert_path: str
    chain: bytes  # PEM, end-entity first
    alg: str  # c2pa's name for the algorithm: es256, ps256, ed25519...
    signer: str  # who signs, from the certificate: "common name (organisation)"
    fingerprint: str  # SHA-256 of the end-entity certificate: keys the signed copies
    key: bytes = field(repr=False)  # PEM private key: never logged, never part of a step key


def _read(path: str, setting: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as err:
        raise SigningSettingError(f"{setting}: cannot read {path} ({err.strerror}): point it at {what}") from None


def _certificates(pem: bytes, path: str, setting: str) -> list:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise SigningSettingError(f"{setting}: {path} holds no PEM certificate: point it at a PEM file") from None


def _algorithm(key) -> str | None:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}.get(key.curve.name)
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    return None


def _name(cert) -> str:
    from cryptography.x509.oid import NameOID

    def first(oid):
        found = cert.subject.get_attributes_for_oid(oid)
        return str(found[0].value) if found else None

    cn, org = first(NameOID.COMMON_NAME), first(NameOID.ORGANIZATION_NAME)
    if cn and org and org != cn:
        return f"{cn} ({org})"
    return cn or org or cert.subject.rfc4514_string()


def signing_key() -> SigningKey | None:
    """The configured signing certificate and key, checked; None when neither is set (assets unsigned)."""
    from cryptography.hazmat.primitives import hashes, serialization

    settings = get_settings()
    cert_path, key_path = (settings.c2pa_cert or "").strip(), (settings.c2pa_key or "").strip()
    if not cert_path and not key_path:
        return None
    if not cert_path or not key_path:
        have, lacking = (
            ("GENBUNDLE_C2PA_CERT", "GENBUNDLE_C2PA_KEY")
            if cert_path
            else ("GENBUNDLE_C2PA_KEY", "GENBUNDLE_C2PA_CERT")
        )
        raise SigningSettingError(
            f"{have} is set but {lacking} is not: set both (PEM files) to sign the assets, "
            "or neither to leave them unsigned"
        )
    chain = _read(cert_path, "GENBUNDLE_C2PA_CERT", "the PEM certificate chain (end-entity first)")
    key_pem = _read(key_path, "GENBUNDLE_C2PA_KEY", "the PEM private key of the signing certificate")
    certs = _certificates(chain, cert_path, "GENBUNDLE_C2PA_CERT")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # a passphrase-protected key: c2pa takes it only unencrypted
        raise SigningSettingError(
            f"GENBUNDLE_C2PA_KEY: {key_path} is encrypted: c2pa needs it unencrypted "
            "(openssl pkey -in KEY -out KEY.plain), kept readable only by the signing user"
        ) from None
    except Exception:  # ValueError, UnsupportedAlgorithm: not a key cryptography can read
        raise SigningSettingError(
            f"GENBUNDLE_C2PA_KEY: {key_path} holds no PEM private key: point it at the signing certificate's key"
        ) from None
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    end_entity = certs[0]
    if key.public_key().public_bytes(*raw) != end_entity.public_key().public_bytes(*raw):
        raise SigningSettingError(
            f"GENBUNDLE_C2PA_KEY: {key_path} does not match the first certificate in GENBUNDLE_C2PA_CERT "
            f"({_name(end_entity)}): use the key that certificate was issued for, with the end-entity certificate first"
        )
    alg = _algorithm(key)
    if alg is None:
        raise SigningSettingError(
            f"GENBUNDLE_C2PA_KEY: {key_path} is a key type C2PA cannot sign with: use EC P-256/384/521, RSA or Ed25519"
        )
    if end_entity.not_valid_after_utc <= datetime.now(UTC):
        raise SigningSettingError(
            f"GENBUNDLE_C2PA_CERT: the certificate {_name(end_entity)} expired on "
            f"{end_entity.not_valid_after_utc:%Y-%m-%d}: renew it with its CA"
        )
    fingerprint = end_entity.fingerprint(hashes.SHA256()).hex()
    return SigningKey(cert_path, chain, alg, _name(end_entity), fingerprint, key=key_pem)


def trust_anchors(path: str | None = None) -> bytes | None:
    """The PEM roots a reader trusts (the argument, else GENBUNDLE_C2PA_TRUST); None when not given."""
    setting = "--trust" if path else "GENBUNDLE_C2PA_TRUST"  # name what the person typed
    path = (path or get_settings().c2pa_trust or "").strip()
    if not path:
        return None
    pem = _read(path, setting, "a PEM file of trusted root certificates")
    _certificates(pem, path, setting)
    return pem


def _signer(key: SigningKey):
    from c2pa import C2paSignerInfo, Signer

    return Signer.from_info(C2paSignerInfo(key.alg, key.chain, key.key, None))  # None: no timestamp authority


def _builder(definition: dict):
    from c2pa import Builder, Context

    # The default thumbnail adds ~600 KB and ~80 ms per file, and the bundle holds the pictures anyway.
    return Builder.from_json(definition, Context.from_dict({"builder": {"thumbnail": {"enabled": False}}}))


def check_signing() -> SigningKey | None:
    """Preflight: the signing settings read, match, and c2pa signs with them (a 1-pixel PNG, in memory)."""
    key = signing_key()
    trust_anchors()
    if key is None:
        return None
    from c2pa import C2paError
    from PIL import Image

    probe = io.BytesIO()
    Image.new("RGB", (1, 1)).save(probe, format="PNG")
    probe.seek(0)
    created = {"action": "c2pa.created", "digitalSourceType": ALGORITHMIC}
    definition = {"title": "probe.png", "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": [created]}}]}
    try:
        _builder(definition).sign(_signer(key), "image/png", probe, io.BytesIO())
    except C2paError as err:
        raise SigningSettingError(
            f"GENBUNDLE_C2PA_CERT: c2pa will not sign with {key.cert_path} ({err}): it needs the chain without its "
            "root, end-entity first, with CA:FALSE, digitalSignature key usage and the emailProtection usage"
        ) from None
    return key


def _depth(role: str) -> int:
    """How many derivations from a generation: sources are signed before what is made from them."""
    if role not in DERIVED:
        return 0
    parent, component, _, _ = DERIVED[role]
    return 1 + max(_depth(r) for r in (parent, component) if r)


def _engines(file: BundleFile, generated: dict[str, Generated]) -> list[dict]:
    """The generations a file holds: engine, weights, licence, seed."""
    runs = []
    for role in file.sources:
        run = generated[role].engine
        runs.append(
            {
                "role": role,
                "engine": run.name,
                "title": run.title,
                "weights": run.model,
                "profile": run.profile,
                "licence": run.licence,
                "licence_url": run.licence_url,
                "commercial_use": run.commercial_use,
                "seed": run.seed,
                "steps": run.steps,
                "scheduler": run.scheduler,
            }
        )
    return runs


def manifest_definition(file: BundleFile, generated: dict[str, Generated], ingredients: dict[str, str]) -> dict:
    """The C2PA manifest of one file: its actions and its generation assertion.

    `ingredients` maps the label of each signed source the file was made from to its relationship.
    """
    version = metadata.version("genbundle")
    engines = _engines(file, generated)
    agent = {"name": "genbundle with " + ", ".join(e["title"] for e in engines), "version": version}
    parent, component, edit, source_type = DERIVED.get(file.role, (None, None, None, None))
    if parent in ingredients:
        actions = [{"action": "c2pa.opened", "parameters": {"ingredientIds": [parent]}}]
        if component in ingredients:
            actions.append({"action": "c2pa.placed", "parameters": {"ingredientIds": [component]}})
        actions.append(
            {"action": "c2pa.edited", "digitalSourceType": source_type, "softwareAgent": agent, "description": edit}
        )
    else:
        made_by = ALGORITHMIC if file.role == "noise_schedule" else TRAINED
        actions = [{"action": "c2pa.created", "digitalSourceType": made_by, "softwareAgent": agent}]
    generation = {"engines": engines, "disclosure": DISCLOSURE}
    return {
        "claim_generator_info": [{"name": "genbundle", "version": version}],
        "title": Path(file.step.path).name,
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": actions}},
            {"label": GENERATION_LABEL, "data": generation},
        ],
    }


def sign_file(source: Path, dest: Path, definition: dict, ingredients: dict[str, tuple[str, Path]], key: SigningKey):
    """Write a signed copy of `source` to `dest`; `ingredients`: label -> (relationship, signed file)."""
    builder = _builder(definition)
    for label, (relationship, path) in ingredients.items():
        with open(path, "rb") as fh:
            meta = {"title": Path(path).name, "relationship": relationship, "label": label}
            builder.add_ingredient(meta, SIGNABLE[Path(path).suffix.lower()], fh)
    with open(source, "rb") as src, open(dest, "w+b") as out:
        builder.sign(_signer(key), SIGNABLE[source.suffix.lower()], src, out)


@task(name="sign-assets", cache_policy=NO_CACHE)
def sign_assets(files: list[BundleFile], generated: dict[str, Generated], workspace: Workspace) -> list[BundleFile]:
    """With a signing certificate, each PNG, WAV and MP4 replaced by a signed copy made in the work
    area (keyed by its source, the certificate's fingerprint and this code, so a re-run reuses it);
    without one, the files unchanged."""
    key = signing_key()
    if key is None:
        return files
    import c2pa

    signed: dict[str, BundleFile] = {}
    for file in sorted(files, key=lambda f: _depth(f.role)):
        source = Path(file.step.path)
        if source.suffix.lower() not in SIGNABLE:
            signed[file.role] = file
            continue
        parent, component, _, _ = DERIVED.get(file.role, (None, None, None, None))
        relations = {parent: "parentOf", component: "componentOf"}
        sources = {r: rel for r, rel in relations.items() if r and r in signed and signed[r].signer}
        inputs = {
            "source": file.step.key or sha256_file(source),
            "name": source.name,
            "role": file.role,
            "ingredients": {r: signed[r].step.key for r in sources},
            "certificate": key.fingerprint,
            "c2pa": c2pa.sdk_version(),
        }
        step = workspace.step("sign", inputs, sign_assets.fn, manifest_definition, sign_file, _engines)
        done = step.load(StepResult)
        if done is None:
            out = step.file(source.name)
            with atomic_path(out) as tmp:
                definition = manifest_definition(file, generated, sources)
                sign_file(source, tmp, definition, {r: (rel, signed[r].step.path) for r, rel in sources.items()}, key)
            done = step.save(StepResult(path=str(out)))
        # The source step's record (reuse, compute, disclosure) stays; only the file is the signed one.
        step_result = file.step.model_copy(update={"path": done.path, "key": step.key})
        signed[file.role] = dataclasses.replace(file, step=step_result, signer=key.signer)
    run_logger(__name__).info("C2PA: %d files signed by %s", sum(1 for f in signed.values() if f.signer), key.signer)
    return [signed[f.role] for f in files]


class CredentialCheck(BaseModel):
    """One file's content credentials as a reader finds them."""

    state: str  # Trusted | Valid | Invalid | missing
    signer: str | None = None
    failures: list[str] = []  # C2PA validation failure codes, e.g. assertion.dataHash.mismatch
    ok: bool

    def describe(self) -> str:
        by = f", signed by {self.signer}" if self.signer else ""
        if self.state == "missing":
            return "C2PA missing: the file carries no content credentials, though the manifest says it was signed"
        if self.state == "Valid" and not self.ok:
            return f"C2PA Valid but untrusted: the signer is not under the trust anchors given{by}"
        if self.state == "Valid":
            return f"C2PA Valid (intact; signer not checked: give trust anchors to check it){by}"
        if self.failures:
            return f"C2PA {self.state}: {', '.join(self.failures)}{by}"
        return f"C2PA {self.state}{by}"


def read_credentials(path: Path, anchors: bytes | None = None) -> CredentialCheck:
    """Validate a file's C2PA manifest with c2pa's Reader; with trust anchors, only Trusted is ok."""
    from c2pa import C2paError, Context, Reader

    path = Path(path)
    context = Context.from_dict({"trust": {"user_anchors": anchors.decode()}}) if anchors else Context()
    try:
        with open(path, "rb") as fh:
            reader = Reader.try_create(SIGNABLE.get(path.suffix.lower(), ""), fh, None, context)
            if reader is None:
                return CredentialCheck(state="missing", ok=False)
            with reader:
                state = reader.get_validation_state() or "Invalid"
                results = (reader.get_validation_results() or {}).get("activeManifest", {})
                info = (reader.get_active_manifest() or {}).get("signature_info", {})
    except C2paError as err:  # a manifest too damaged to parse: tampered as far as anyone can tell
        return CredentialCheck(state="Invalid", failures=[f"{type(err).__name__.strip('_')}: {err}"], ok=False)
    failures = [f["code"] for f in results.get("failure", []) if anchors or f["code"] != UNTRUSTED]
    cn, org = info.get("common_name"), info.get("issuer")
    signer = f"{cn} ({org})" if cn and org and org != cn else (cn or org)
    ok = state == "Trusted" if anchors else state in ("Valid", "Trusted")
    return CredentialCheck(state=state, signer=signer, failures=failures, ok=ok)
