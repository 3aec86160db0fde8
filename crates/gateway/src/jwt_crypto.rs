//! The signatures of tokens (JWTs) on *ring*, the cryptography the TLS listener already uses.
//!
//! `jsonwebtoken` leaves its cryptography to a [`CryptoProvider`]. Its own two are
//! `rust_crypto` (the RustCrypto `rsa`, `p256`, `p384` and `ed25519-dalek` crates: about two
//! dozen crates to compile, and an `rsa` crate with an open timing advisory, RUSTSEC-2023-0071)
//! and `aws_lc_rs` (a large C build). *ring* is already in every build for TLS and has every
//! algorithm a token may use, so this module maps each JWT algorithm onto it: HMAC for the
//! server's own HS256 tokens, and RSA (PKCS #1 v1.5 and PSS), ECDSA (P-256, P-384) and Ed25519
//! for an identity provider's. [`install`] must run before the first token is signed or
//! checked; [`crate::auth::Auth`] calls it when it is built.
//!
//! Key formats are jsonwebtoken's: an RSA key is PKCS #1 DER (a private key) or the PKCS #1
//! `RSAPublicKey` DER (a public one) or its modulus and exponent; an EC or Ed25519 private key
//! is PKCS #8 DER and its public key the raw point; an HMAC key is the secret's bytes.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{self as sig, KeyPair};
use ring::{digest, hmac};

/// The provider: every algorithm on *ring*.
static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_from_private_key,
        rsa_pub_components_from_public_key: unsupported_rsa_public_components,
        ec_pub_components_from_private_key: ec_components_from_private_key,
        ed_pub_components_from_private_key: ed_component_from_private_key,
        compute_digest,
    },
};

/// Makes *ring* jsonwebtoken's cryptography for this process (idempotent). When another
/// provider was installed or picked first (a test build that also compiles jsonwebtoken's
/// `rust_crypto` feature for the test kit), that one stays: both check the same signatures.
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = RING_PROVIDER.install_default();
    });
}

/// A signer: what `jsonwebtoken::encode` asks for.
enum RingSigner {
    Hmac(Algorithm, hmac::Key),
    Rsa(Algorithm, &'static dyn sig::RsaEncoding, sig::RsaKeyPair),
    Ecdsa(Algorithm, sig::EcdsaKeyPair),
    Ed25519(sig::Ed25519KeyPair),
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let rng = SystemRandom::new();
        match self {
            Self::Hmac(_, key) => Ok(hmac::sign(key, msg).as_ref().to_vec()),
            Self::Rsa(_, encoding, pair) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(*encoding, &rng, msg, &mut out)
                    .map_err(|_| signature::Error::new())?;
                Ok(out)
            }
            Self::Ecdsa(_, pair) => pair
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
            Self::Ed25519(pair) => Ok(pair.sign(msg).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        match self {
            Self::Hmac(a, _) | Self::Rsa(a, _, _) | Self::Ecdsa(a, _) => *a,
            Self::Ed25519(_) => Algorithm::EdDSA,
        }
    }
}

/// A verifier: what `jsonwebtoken::decode` asks for.
struct RingVerifier {
    algorithm: Algorithm,
    check: Check,
}

enum Check {
    Hmac(hmac::Key),
    /// A public key in the encoding *ring* parses (RSA `RSAPublicKey` DER, EC point, Ed25519).
    Public(&'static dyn sig::VerificationAlgorithm, Vec<u8>),
    RsaComponents(&'static sig::RsaParameters, Vec<u8>, Vec<u8>),
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let ok = match &self.check {
            Check::Hmac(key) => hmac::verify(key, msg, signature),
            Check::Public(alg, key) => {
                sig::UnparsedPublicKey::new(*alg, key).verify(msg, signature)
            }
            Check::RsaComponents(params, n, e) => {
                sig::RsaPublicKeyComponents { n, e }.verify(params, msg, signature)
            }
        };
        ok.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn hmac_algorithm(alg: Algorithm) -> Option<hmac::Algorithm> {
    match alg {
        Algorithm::HS256 => Some(hmac::HMAC_SHA256),
        Algorithm::HS384 => Some(hmac::HMAC_SHA384),
        Algorithm::HS512 => Some(hmac::HMAC_SHA512),
        _ => None,
    }
}

/// The RSA verification of an RS* or PS* algorithm (2048- to 8192-bit keys).
fn rsa_parameters(alg: Algorithm) -> Option<&'static sig::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    let alg = *alg;
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let bytes = key.as_bytes();
    let signer = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let h = hmac_algorithm(alg).ok_or(ErrorKind::InvalidAlgorithm)?;
            RingSigner::Hmac(alg, hmac::Key::new(h, bytes))
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            let encoding: &'static dyn sig::RsaEncoding = match alg {
                Algorithm::RS256 => &sig::RSA_PKCS1_SHA256,
                Algorithm::RS384 => &sig::RSA_PKCS1_SHA384,
                Algorithm::RS512 => &sig::RSA_PKCS1_SHA512,
                Algorithm::PS256 => &sig::RSA_PSS_SHA256,
                Algorithm::PS384 => &sig::RSA_PSS_SHA384,
                _ => &sig::RSA_PSS_SHA512,
            };
            let pair = sig::RsaKeyPair::from_der(bytes)
                .or_else(|_| sig::RsaKeyPair::from_pkcs8(bytes))
                .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
            RingSigner::Rsa(alg, encoding, pair)
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            let signing = if alg == Algorithm::ES256 {
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &sig::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let pair = sig::EcdsaKeyPair::from_pkcs8(signing, bytes, &SystemRandom::new())
                .map_err(|_| ErrorKind::InvalidEcdsaKey)?;
            RingSigner::Ecdsa(alg, pair)
        }
        Algorithm::EdDSA => RingSigner::Ed25519(
            sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
                .map_err(|_| ErrorKind::InvalidEddsaKey)?,
        ),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(Box::new(signer))
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let alg = *alg;
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let public: &'static dyn sig::VerificationAlgorithm = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let h = hmac_algorithm(alg).ok_or(ErrorKind::InvalidAlgorithm)?;
            let secret = key.try_get_as_bytes()?;
            return Ok(Box::new(RingVerifier {
                algorithm: alg,
                check: Check::Hmac(hmac::Key::new(h, secret)),
            }));
        }
        Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &sig::ED25519,
        _ => rsa_parameters(alg).ok_or(ErrorKind::InvalidAlgorithm)?,
    };
    let check = match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => Check::Public(public, bytes.clone()),
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            let params = rsa_parameters(alg).ok_or(ErrorKind::InvalidKeyFormat)?;
            Check::RsaComponents(params, n.clone(), e.clone())
        }
    };
    Ok(Box::new(RingVerifier {
        algorithm: alg,
        check,
    }))
}

fn rsa_components_from_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let pair =
        sig::RsaKeyPair::from_der(der).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
    let public = sig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
    Ok((public.n, public.e))
}

/// JWK thumbprints of RSA public keys in DER are not used by the server; refused, not panicked.
fn unsupported_rsa_public_components(_der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    Err(ErrorKind::InvalidKeyFormat.into())
}

fn ec_components_from_private_key(
    pkcs8: &[u8],
    alg: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>), Error> {
    let (signing, curve, len) = match alg {
        Algorithm::ES256 => (
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            EllipticCurve::P256,
            32,
        ),
        Algorithm::ES384 => (
            &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
            EllipticCurve::P384,
            48,
        ),
        _ => return Err(ErrorKind::InvalidEcdsaKey.into()),
    };
    let pair = sig::EcdsaKeyPair::from_pkcs8(signing, pkcs8, &SystemRandom::new())
        .map_err(|_| ErrorKind::InvalidEcdsaKey)?;
    let point = pair.public_key().as_ref();
    match point.split_first() {
        Some((4, xy)) if xy.len() == 2 * len => {
            let (x, y) = xy.split_at(len);
            Ok((curve, x.to_vec(), y.to_vec()))
        }
        _ => Err(ErrorKind::InvalidEcdsaKey.into()),
    }
}

fn ed_component_from_private_key(pkcs8: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>, Error> {
    match curve {
        EllipticCurve::Ed25519 => Ok(sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|_| ErrorKind::InvalidEddsaKey)?
            .public_key()
            .as_ref()
            .to_vec()),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>, Error> {
    let alg = match hash {
        ThumbprintHash::SHA256 => &digest::SHA256,
        ThumbprintHash::SHA384 => &digest::SHA384,
        ThumbprintHash::SHA512 => &digest::SHA512,
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(digest::digest(alg, data).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, encode, Header, Validation};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct C {
        sub: String,
        exp: u64,
    }

    fn claims() -> C {
        C {
            sub: "a".into(),
            exp: crate::clock::now_secs() + 60,
        }
    }

    /// HS256/384/512 sign and verify, and a token signed with another secret, or whose
    /// signature was altered by one bit, is refused.
    #[test]
    fn hmac_tokens_round_trip_and_forgeries_fail() {
        install();
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let t = encode(
                &Header::new(alg),
                &claims(),
                &EncodingKey::from_secret(b"k"),
            )
            .unwrap();
            let v = Validation::new(alg);
            assert!(decode::<C>(&t, &DecodingKey::from_secret(b"k"), &v).is_ok());
            assert!(decode::<C>(&t, &DecodingKey::from_secret(b"x"), &v).is_err());
            let mut bad = t.into_bytes();
            let last = bad.len() - 2;
            bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap();
            assert!(decode::<C>(&bad, &DecodingKey::from_secret(b"k"), &v).is_err());
        }
    }

    /// A key of one family is refused for another family's algorithm, with an error, not a
    /// panic; so are the JWK helpers the server does not use.
    #[test]
    fn mismatched_keys_and_unused_helpers_are_errors() {
        install();
        let hmac = EncodingKey::from_secret(b"k");
        assert!(encode(&Header::new(Algorithm::RS256), &claims(), &hmac).is_err());
        assert!(new_verifier(&Algorithm::ES256, &DecodingKey::from_secret(b"k")).is_err());
        assert!(unsupported_rsa_public_components(b"").is_err());
        assert!(ec_components_from_private_key(b"", Algorithm::ES256).is_err());
        assert_eq!(
            compute_digest(b"abc", ThumbprintHash::SHA256).unwrap()[..4],
            [0xba, 0x78, 0x16, 0xbf]
        );
    }
}
