//! Ed25519 signing and verification of policy versions.
//!
//! **Canonical bytes.** The signer encodes the [`PolicyVersion`] as protobuf once; those
//! bytes travel verbatim as `SignedPolicy.payload`, and the signature covers
//! [`signed_message`]`(payload)` = `"bulkhead.policy.v1" || 0x00 || payload`. A verifier
//! checks the signature over the bytes it received and decodes them only afterwards, so
//! no re-encoding is ever needed (there is nothing to canonicalise), and the domain prefix
//! keeps a policy signature from being valid for any other message.
//!
//! **Acceptance.** [`PolicyVerifier::verify`] refuses, in this order: an unsupported
//! envelope, an unsigned message, a key that is not trusted, a signature that does not
//! verify (strict Ed25519: no malleable signatures, no weak keys), an undecodable payload,
//! a version not above the applied one, and a document that fails validation.

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use prost::Message as _;
use sha2::Digest as _;

use super::{PolicyError, PolicyVersion};
use crate::proto;

/// Domain-separation prefix of every policy signature.
pub const SIGNATURE_DOMAIN: &[u8] = b"bulkhead.policy.v1\0";

/// The exact bytes a policy signature covers.
pub fn signed_message(payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_DOMAIN.len() + payload.len());
    message.extend_from_slice(SIGNATURE_DOMAIN);
    message.extend_from_slice(payload);
    message
}

/// Hex of the first 8 bytes of SHA-256 of the public key: names a key in messages and logs.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&sha2::Sha256::digest(key.as_bytes())[..8])
}

/// A key that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct KeyError {
    pub source_name: String,
    pub message: String,
}

/// Reads a public key from 64 hex characters (the raw 32 bytes) or a PEM
/// `PUBLIC KEY` (SubjectPublicKeyInfo). `source_name` names the input in errors.
pub fn parse_verifying_key(text: &str, source_name: &str) -> Result<VerifyingKey, KeyError> {
    let err = |message: String| KeyError {
        source_name: source_name.to_string(),
        message,
    };
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text)
            .map_err(|e| err(format!("not an Ed25519 PEM public key: {e}")));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| {
        err("expected an Ed25519 public key: 64 hex characters or a PEM PUBLIC KEY".into())
    })?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| err(format!("not a valid Ed25519 public key: {e}")))
}

/// Signs policy versions with one Ed25519 key.
pub struct PolicySigner {
    key: SigningKey,
    key_id: String,
}

impl PolicySigner {
    pub fn new(key: SigningKey) -> Self {
        let key_id = key_id(&key.verifying_key());
        Self { key, key_id }
    }

    /// A new random key (from the OS's CSPRNG).
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut seed);
        Self::new(SigningKey::from_bytes(&seed))
    }

    /// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str, source_name: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(Self::new)
            .map_err(|e| KeyError {
                source_name: source_name.to_string(),
                message: format!("not an Ed25519 PKCS#8 PEM private key: {e}"),
            })
    }

    /// The private key as PKCS#8 PEM.
    pub fn to_pkcs8_pem(&self) -> String {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("an Ed25519 key always encodes")
            .to_string()
    }

    /// The public key as SubjectPublicKeyInfo PEM.
    pub fn public_key_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("an Ed25519 key always encodes")
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The signed envelope of `version`.
    pub fn sign(&self, version: &PolicyVersion) -> proto::SignedPolicy {
        let payload = proto::PolicyVersion::from(version).encode_to_vec();
        let signature = self.key.sign(&signed_message(&payload));
        proto::SignedPolicy {
            schema_version: crate::SCHEMA_VERSION,
            key_id: self.key_id.clone(),
            payload,
            signature: signature.to_bytes().to_vec(),
        }
    }
}

/// Verifies signed policy against a set of trusted keys.
#[derive(Clone, Debug)]
pub struct PolicyVerifier {
    keys: Vec<(String, VerifyingKey)>,
}

impl PolicyVerifier {
    /// Trusts `keys` (more than one during a key rotation).
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (key_id(&k), k)).collect(),
        }
    }

    /// Decodes and verifies raw bytes from the policy topic.
    pub fn verify_bytes(
        &self,
        bytes: &[u8],
        applied: Option<u64>,
    ) -> Result<PolicyVersion, PolicyError> {
        let signed = proto::SignedPolicy::decode(bytes)
            .map_err(|e| PolicyError::Malformed(format!("not a SignedPolicy: {e}")))?;
        self.verify(&signed, applied)
    }

    /// The policy version in `signed`, if it is signed by a trusted key, newer than
    /// `applied` (the version in force, if any) and valid.
    pub fn verify(
        &self,
        signed: &proto::SignedPolicy,
        applied: Option<u64>,
    ) -> Result<PolicyVersion, PolicyError> {
        if signed.schema_version > crate::SCHEMA_VERSION {
            return Err(PolicyError::UnsupportedSchemaVersion {
                found: signed.schema_version,
                supported: crate::SCHEMA_VERSION,
            });
        }
        if signed.signature.is_empty() {
            return Err(PolicyError::Unsigned);
        }
        let key = self
            .keys
            .iter()
            .find(|(id, _)| *id == signed.key_id)
            .map(|(_, key)| key)
            .ok_or_else(|| PolicyError::UnknownKey {
                key_id: signed.key_id.clone(),
            })?;
        let bad_signature = || PolicyError::BadSignature {
            key_id: signed.key_id.clone(),
        };
        let signature = Signature::from_slice(&signed.signature).map_err(|_| bad_signature())?;
        key.verify_strict(&signed_message(&signed.payload), &signature)
            .map_err(|_| bad_signature())?;

        let version = proto::PolicyVersion::decode(signed.payload.as_slice())
            .map_err(|e| PolicyError::Malformed(format!("payload is not a PolicyVersion: {e}")))?;
        let version = PolicyVersion::try_from(&version)?;
        if version.version == 0 {
            return Err(PolicyError::Malformed(
                "version 0 (versions start at 1)".into(),
            ));
        }
        if let Some(applied) = applied
            && version.version <= applied
        {
            return Err(PolicyError::Stale {
                version: version.version,
                applied,
            });
        }
        version.document.validate()?;
        Ok(version)
    }
}
