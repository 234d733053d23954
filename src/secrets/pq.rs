//! age's hybrid post-quantum recipient type, `mlkem768x25519` (C2SP age spec: "The
//! MLKEM768-X25519 (i.e. X-Wing) hybrid post-quantum recipient type"): `age1pq1…` recipients,
//! `AGE-SECRET-KEY-PQ-1…` identities, and the stanza HPKE(X-Wing, HKDF-SHA256,
//! ChaCha20Poly1305) seals the file key into.
//!
//! The age crate (0.12) has no such type yet; this one plugs into its public `Recipient` /
//! `Identity` traits. Replace it with the age crate's own type once a release carries one.

use std::collections::HashSet;
use std::fmt;

use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore as _;
use age_core::format::{FILE_KEY_BYTES, FileKey, Stanza};
use age_core::primitives::{bech32_decode, bech32_encode, hpke_open, hpke_seal};
use age_core::secrecy::ExposeSecret as _;
use base64::Engine as _;
use base64::prelude::BASE64_STANDARD_NO_PAD;
use hpke::generic_array::typenum::{self, U32, U96, U192, U1024};
use hpke::{Deserializable, HpkeError, Serializable};
use ml_kem::kem::{Decapsulate as _, Encapsulate as _};
use ml_kem::{EncodedSizeUser as _, KemCore as _, MlKem768};
use sha3::digest::{ExtendableOutput as _, Update as _, XofReader as _};
use sha3::{Digest as _, Sha3_256, Shake256};
use zeroize::Zeroizing;

const IDENTITY_HRP: bech32::Hrp = bech32::Hrp::parse_unchecked("AGE-SECRET-KEY-PQ-");
const RECIPIENT_HRP: bech32::Hrp = bech32::Hrp::parse_unchecked("age1pq");

/// The stanza's first argument and the HPKE `info`.
const STANZA_TAG: &str = "mlkem768x25519";
const HPKE_INFO: &[u8] = b"age-encryption.org/mlkem768x25519";
/// The label age gives post-quantum recipients, so that a file is not encrypted to them
/// together with classical ones (which would undo the quantum resistance).
const PQ_LABEL: &str = "postquantum";

/// Sizes of X-Wing (draft-connolly-cfrg-xwing-kem, as MLKEM768-X25519 in draft-ietf-hpke-pq).
const SEED_BYTES: usize = 32;
const MLKEM_EK_BYTES: usize = 1184;
const MLKEM_CT_BYTES: usize = 1088;
const ENC_BYTES: usize = MLKEM_CT_BYTES + 32;
/// The file key plus the ChaCha20Poly1305 tag.
const BODY_BYTES: usize = FILE_KEY_BYTES + 16;
/// X-Wing's domain separator, hashed last into the shared secret.
const XWING_LABEL: &[u8] = br"\.//^\";
/// MLKEM768-X25519's HPKE KEM identifier.
const KEM_ID: u16 = 0x647a;

type MlKemDk = <MlKem768 as ml_kem::KemCore>::DecapsulationKey;
type MlKemEk = <MlKem768 as ml_kem::KemCore>::EncapsulationKey;

/// The X-Wing KEM as an HPKE KEM. Only the composition lives here (seed expansion, the
/// SHA3-256 combiner, the byte layout); ML-KEM, X25519 and HPKE come from their crates.
/// Decapsulation refuses an X25519 share whose shared secret is all zeros, as age does.
struct XWing;

/// A decapsulation key: the 32-byte seed and what it expands to (expanded once, on parse).
#[derive(Clone)]
struct SecretKey {
    seed: Zeroizing<[u8; SEED_BYTES]>,
    mlkem: MlKemDk,
    x25519: x25519_dalek::StaticSecret,
    public: PublicKey,
}

impl SecretKey {
    /// X-Wing's expandDecapsulationKey: SHAKE256(seed) gives ML-KEM's (d, z) and the X25519
    /// scalar.
    fn expand(seed: [u8; SEED_BYTES]) -> Self {
        let seed = Zeroizing::new(seed);
        let mut expanded = Zeroizing::new([0u8; 96]);
        Shake256::default()
            .chain(seed.as_slice())
            .finalize_xof()
            .read(expanded.as_mut());
        let d = ml_kem::B32::try_from(&expanded[..32]).expect("32 of the 96 bytes");
        let z = ml_kem::B32::try_from(&expanded[32..64]).expect("32 of the 96 bytes");
        let (mlkem, mlkem_public) = MlKem768::generate_deterministic(&d, &z);
        let mut scalar = [0u8; 32];
        scalar.copy_from_slice(&expanded[64..]);
        let x25519 = x25519_dalek::StaticSecret::from(scalar);
        let x25519_public = x25519_dalek::PublicKey::from(&x25519);
        SecretKey {
            seed,
            mlkem,
            x25519,
            public: PublicKey {
                mlkem: mlkem_public,
                x25519: x25519_public,
            },
        }
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        self.seed.ct_eq(other.seed.as_ref()).into()
    }
}
impl Eq for SecretKey {}

impl Serializable for SecretKey {
    type OutputSize = U32;

    fn write_exact(&self, buf: &mut [u8]) {
        buf.copy_from_slice(self.seed.as_slice());
    }
}

impl Deserializable for SecretKey {
    fn from_bytes(encoded: &[u8]) -> Result<Self, HpkeError> {
        let seed: [u8; SEED_BYTES] = encoded
            .try_into()
            .map_err(|_| HpkeError::IncorrectInputLength(SEED_BYTES, encoded.len()))?;
        Ok(SecretKey::expand(seed))
    }
}

/// An encapsulation key: ML-KEM-768's (1,184 bytes) then X25519's (32).
#[derive(Clone, Debug, PartialEq)]
struct PublicKey {
    mlkem: MlKemEk,
    x25519: x25519_dalek::PublicKey,
}

impl Eq for PublicKey {}

impl Serializable for PublicKey {
    type OutputSize = typenum::Sum<U1024, U192>;

    fn write_exact(&self, buf: &mut [u8]) {
        buf[..MLKEM_EK_BYTES].copy_from_slice(&self.mlkem.as_bytes());
        buf[MLKEM_EK_BYTES..].copy_from_slice(self.x25519.as_bytes());
    }
}

impl Deserializable for PublicKey {
    fn from_bytes(encoded: &[u8]) -> Result<Self, HpkeError> {
        if encoded.len() != Self::size() {
            return Err(HpkeError::IncorrectInputLength(Self::size(), encoded.len()));
        }
        let (mlkem, x25519) = encoded.split_at(MLKEM_EK_BYTES);
        let mlkem =
            ml_kem::Encoded::<MlKemEk>::try_from(mlkem).map_err(|_| HpkeError::ValidationError)?;
        let x25519: [u8; 32] = x25519.try_into().map_err(|_| HpkeError::ValidationError)?;
        Ok(PublicKey {
            mlkem: MlKemEk::from_bytes(&mlkem),
            x25519: x25519_dalek::PublicKey::from(x25519),
        })
    }
}

/// The encapsulated key `enc`: ML-KEM-768's ciphertext (1,088 bytes) then the X25519 share.
#[derive(Clone)]
struct EncappedKey([u8; ENC_BYTES]);

impl Serializable for EncappedKey {
    type OutputSize = typenum::Sum<U1024, U96>;

    fn write_exact(&self, buf: &mut [u8]) {
        buf.copy_from_slice(&self.0);
    }
}

impl Deserializable for EncappedKey {
    fn from_bytes(encoded: &[u8]) -> Result<Self, HpkeError> {
        encoded
            .try_into()
            .map(EncappedKey)
            .map_err(|_| HpkeError::IncorrectInputLength(ENC_BYTES, encoded.len()))
    }
}

/// X-Wing's combiner: SHA3-256(ss_M || ss_X || ct_X || pk_X || label).
fn combine(
    mlkem_secret: &[u8],
    x25519_secret: &x25519_dalek::SharedSecret,
    share: &[u8],
    x25519_public: &x25519_dalek::PublicKey,
) -> hpke::generic_array::GenericArray<u8, U32> {
    let digest = Sha3_256::new()
        .chain_update(mlkem_secret)
        .chain_update(x25519_secret.as_bytes())
        .chain_update(share)
        .chain_update(x25519_public.as_bytes())
        .chain_update(XWING_LABEL)
        .finalize();
    hpke::generic_array::GenericArray::clone_from_slice(&digest)
}

impl hpke::Kem for XWing {
    type PublicKey = PublicKey;
    type PrivateKey = SecretKey;
    type EncappedKey = EncappedKey;
    type NSecret = U32;
    const KEM_ID: u16 = KEM_ID;

    fn sk_to_pk(sk: &SecretKey) -> PublicKey {
        sk.public.clone()
    }

    /// draft-ietf-hpke-pq: seed = SHAKE256.LabeledDerive(ikm, "DeriveKeyPair", "", 32).
    fn derive_keypair(ikm: &[u8]) -> (SecretKey, PublicKey) {
        const LABEL: &[u8] = b"DeriveKeyPair";
        let mut seed = [0u8; SEED_BYTES];
        Shake256::default()
            .chain(ikm)
            .chain(b"HPKE-v1")
            .chain(b"KEM")
            .chain(KEM_ID.to_be_bytes())
            .chain((LABEL.len() as u16).to_be_bytes())
            .chain(LABEL)
            .chain((SEED_BYTES as u16).to_be_bytes())
            .finalize_xof()
            .read(&mut seed);
        let sk = SecretKey::expand(seed);
        let pk = sk.public.clone();
        (sk, pk)
    }

    fn decap(
        sk_recip: &SecretKey,
        pk_sender_id: Option<&PublicKey>,
        encapped_key: &EncappedKey,
    ) -> Result<hpke::kem::SharedSecret<Self>, HpkeError> {
        if pk_sender_id.is_some() {
            // age seals in HPKE's base mode only.
            return Err(HpkeError::DecapError);
        }
        let (ct, share) = encapped_key.0.split_at(MLKEM_CT_BYTES);
        let ct = ml_kem::Ciphertext::<MlKem768>::try_from(ct).map_err(|_| HpkeError::DecapError)?;
        let mlkem_secret: Zeroizing<[u8; 32]> = Zeroizing::new(
            sk_recip
                .mlkem
                .decapsulate(&ct)
                .map_err(|()| HpkeError::DecapError)?
                .into(),
        );
        let share: [u8; 32] = share.try_into().map_err(|_| HpkeError::DecapError)?;
        let x25519_secret = sk_recip
            .x25519
            .diffie_hellman(&x25519_dalek::PublicKey::from(share));
        if !x25519_secret.was_contributory() {
            return Err(HpkeError::DecapError);
        }
        Ok(hpke::kem::SharedSecret(combine(
            mlkem_secret.as_slice(),
            &x25519_secret,
            &share,
            &sk_recip.public.x25519,
        )))
    }

    fn encap<R: hpke::rand_core::CryptoRng + hpke::rand_core::RngCore>(
        pk_recip: &PublicKey,
        sender_id_keypair: Option<(&SecretKey, &PublicKey)>,
        csprng: &mut R,
    ) -> Result<(hpke::kem::SharedSecret<Self>, EncappedKey), HpkeError> {
        if sender_id_keypair.is_some() {
            return Err(HpkeError::EncapError);
        }
        let (ct, mlkem_secret) = pk_recip
            .mlkem
            .encapsulate(csprng)
            .map_err(|()| HpkeError::EncapError)?;
        let mlkem_secret: Zeroizing<[u8; 32]> = Zeroizing::new(mlkem_secret.into());
        let ephemeral = x25519_dalek::EphemeralSecret::random_from_rng(&mut *csprng);
        let share = x25519_dalek::PublicKey::from(&ephemeral);
        let x25519_secret = ephemeral.diffie_hellman(&pk_recip.x25519);
        let mut enc = [0u8; ENC_BYTES];
        enc[..MLKEM_CT_BYTES].copy_from_slice(&ct);
        enc[MLKEM_CT_BYTES..].copy_from_slice(share.as_bytes());
        let secret = combine(
            mlkem_secret.as_slice(),
            &x25519_secret,
            share.as_bytes(),
            &pk_recip.x25519,
        );
        Ok((hpke::kem::SharedSecret(secret), EncappedKey(enc)))
    }
}

/// An `AGE-SECRET-KEY-PQ-1…` identity. No `Debug`, no `Display`: it cannot be printed by
/// accident; [`Identity::to_secret_string`] is the one way out.
pub(crate) struct Identity(SecretKey);

impl Identity {
    /// A new identity from 32 bytes of the operating system's randomness, as the spec says.
    pub(crate) fn generate() -> Self {
        let mut seed = [0u8; SEED_BYTES];
        OsRng.fill_bytes(&mut seed);
        Identity(SecretKey::expand(seed))
    }

    /// Parses `AGE-SECRET-KEY-PQ-1…` (Bech32 without its length limit; upper case, as age
    /// writes it, or lower case).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        bech32_decode(
            text,
            |_| (),
            |hrp| (hrp == IDENTITY_HRP).then_some(()).ok_or(()),
            |_, bytes| {
                let seed = Zeroizing::new(bytes.collect::<Vec<u8>>());
                SecretKey::from_bytes(&seed).map(Identity).map_err(|_| ())
            },
        )
        .ok()
    }

    /// The identity as age writes it (upper case).
    pub(crate) fn to_secret_string(&self) -> Zeroizing<String> {
        let lower = Zeroizing::new(bech32_encode(IDENTITY_HRP, self.0.seed.as_slice()));
        Zeroizing::new(lower.to_uppercase())
    }

    pub(crate) fn to_public(&self) -> Recipient {
        Recipient(self.0.public.clone())
    }
}

impl age::Identity for Identity {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, age::DecryptError>> {
        if stanza.tag != STANZA_TAG {
            return None;
        }
        // The spec's checks before any decryption: exactly one argument, the canonical base64
        // of 1,120 bytes, and a body of exactly 32 bytes (against partitioning oracles).
        let enc = match stanza.args.as_slice() {
            [arg] => BASE64_STANDARD_NO_PAD
                .decode(arg)
                .ok()
                .filter(|b| b.len() == ENC_BYTES)
                .and_then(|b| EncappedKey::from_bytes(&b).ok()),
            _ => None,
        };
        let Some(enc) = enc else {
            return Some(Err(age::DecryptError::InvalidHeader));
        };
        if stanza.body.len() != BODY_BYTES {
            return Some(Err(age::DecryptError::InvalidHeader));
        }
        match hpke_open::<XWing>(&enc, &self.0, HPKE_INFO, &stanza.body) {
            Ok(plain) => {
                let plain = Zeroizing::new(plain);
                Some(Ok(FileKey::init_with_mut(|key| {
                    key.copy_from_slice(&plain);
                })))
            }
            // A share whose X25519 secret is all zeros is a malformed header, not a stanza for
            // someone else.
            Err(HpkeError::DecapError) => Some(Err(age::DecryptError::InvalidHeader)),
            // Not sealed to this identity (nothing tells whose it is): try the next one.
            Err(_) => None,
        }
    }
}

/// An `age1pq1…` recipient.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Recipient(PublicKey);

impl Recipient {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        bech32_decode(
            text,
            |_| (),
            |hrp| (hrp == RECIPIENT_HRP).then_some(()).ok_or(()),
            |_, bytes| {
                PublicKey::from_bytes(&bytes.collect::<Vec<u8>>())
                    .map(Recipient)
                    .map_err(|_| ())
            },
        )
        .ok()
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bech32_encode(RECIPIENT_HRP, &self.0.to_bytes()))
    }
}

impl age::Recipient for Recipient {
    fn wrap_file_key(
        &self,
        file_key: &FileKey,
    ) -> Result<(Vec<Stanza>, HashSet<String>), age::EncryptError> {
        let (enc, body) =
            hpke_seal::<XWing, _>(&self.0, HPKE_INFO, file_key.expose_secret(), &mut OsRng);
        Ok((
            vec![Stanza {
                tag: STANZA_TAG.to_owned(),
                args: vec![BASE64_STANDARD_NO_PAD.encode(enc.0)],
                body,
            }],
            HashSet::from([PQ_LABEL.to_owned()]),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example pair of the C2SP age specification.
    const SPEC_IDENTITY: &str =
        "AGE-SECRET-KEY-PQ-1XX76JRALNLXDMEW0CRK45QMCCH4X06SE84UN3VPM33W6HWDX0H3SK3ZQFR";
    const SPEC_RECIPIENT: &str = "age1pq1x34nzsvr0rxjsgdn8zgyhfe8j7ceq5r9rdelkjuh3y235jzxshfg87pzf5zrqtzdxz95paef6caq5aapdmwjjqpjfdyxnzr2zampc3uxy0dg4z2n2gm9su72p0pc3u0jvev55l694v78snxg3yzvcl7yda0eyytqj6a0ec477lnhcy5hzpz4zq3pxanve4cn62gqj3pjy5lqj9c6kyj4v2z8alktn8zh99970x79gjkv7522hv9kfz35zsnxhsx8wwtmu9cy3ftzjgwcp4sshn3llnylnpdsyz5jm72vefv4x5vfwytrefxg4wq3mv42wcrvkj742479zrxzpvp2p3e9fed9f0739vcu80r7ma28qfhnvlv4gfzel9q654dj3zmuvvz893azhxdvs9fxd0r7jzchzcfcs5mkyyjxhw0n2z6dvp9yn9qfdp29h0azxqyjw6v7fhyuzj7zel0uq6j9rd7wgrpz7mf5dnj43jwsgvrc8qcnhy7tu6dkdujuxzkp9xj43xe8h92ktre2a3u3s8mm5mrp9nr9pwkgtz4mdlq9hgn4fps4k57ff6wddn2fy23t47sm20r8km8sd2pcyyafnet8f0dajsrlyjeah4n3mssr6aseevuuskdvq5lzguyvpgwpta742c6698vgutzqgny8usfg0w2he7kq5vyxjd0f9hqg8xk26y9e4th0gezq92q4cpp5p2y9hf5f2cje5l0c3sa3a2qxmm38pxxvhxh99yzmfz0zk7r2s64nnwjhkfgfr3gf8xnmppcgmaykvh5sh6g7vk9790rf8ws0axmr2t7z8aae5fq2029uvcn2ghgt4fu4wgwdc0k0cz52qkvwmuzj8p8k5jgf3xzk5zmrkavjekjrpeq408xz3zxazwkc6tyfmhayrkfpjhwtz5mp8j8guqe43k2q6m2kte03vrw27y3wmqyu5etmt9dnkwcnnpmu9gz9dekfhdevf42ucshphnrk38ra6hx8w5f8q5ru0xdhrjxmwqf6cused7zc5xvq43r0zscjglpwlptpwydhqw64xz7ptjdyeyzpq2zkxtmzg29gzjpvzva4d3l0cenn9xs297wf4y4ukwrunf57xj6pm7nvrkwvtrt8hwcmgv8x7ajw7258ugf9wvkmk4052ekg87tw5vnx8nq2swyzv77v8yqlwsenvamr0zssknwts8rrhfuwj7ykysnq9jxy0uv3kuyt22djszjdtvpz6d0s0kwh8ryynddzud92emeyvvyqktd0jtj7rvvg5gch25v8smlvny3kvn5gagyz475ze2y6q466xqmz2n3hs77lddeqyta2nch5k2u5yacuk9ywnwfdzvyejnucz724hj77hrrmakm7pr3kxsrxq22ejexlud9fy2kdqmkg5yncz7jm5wv2qjk5w5kvcpqsry2yqffh2la52dxfjkjq5rzhjzeyn6dupn0qwtyv7s4lwg3xdarsdlwe2y3tujy480y7z39q259fzx6jhd2j0f5hagqpcpees7hzc2yrk5cy788uk3s7qvp5cpepx24gvws3m2g433exgwppnkjscec8qu4y9z9r7vccexjcjaen42245lmgmxmuavg9alej92322gvvyy2t6267v09ch64y0m53jff0vjj96s0ypk60hr3jw4myd6m5hpn3xjstx7tl2szhpr5qe8jj08ydjc4wy2rch2fhuy3pdfjax5awe9j99ly5hkntzz9fe5zatgjvzdd0kgtxs25njnajyf6ssekp7gelxquusn4pt25czh3scj68kq79wdn5tgm6yvm9nzavrg043x3msnygf8dweknw5jmqd0uvny6ttsn09508k0c55zfnegrm9efhxpfqdkmhh6gjtqmwze9pyyzk3tlhl53k2ykx3qheyty7saeq0d3fzv49zc0k";

    #[test]
    fn the_spec_identity_yields_the_spec_recipient_and_both_round_trip() {
        let id = Identity::parse(SPEC_IDENTITY).expect("the spec's identity parses");
        assert_eq!(id.to_secret_string().as_str(), SPEC_IDENTITY);
        let public = id.to_public().to_string();
        assert_eq!(public, SPEC_RECIPIENT);
        let again = Recipient::parse(&public).expect("a recipient we print parses");
        assert_eq!(again.to_string(), public);
        assert!(Identity::parse(&SPEC_IDENTITY.to_lowercase()).is_some());
        assert!(Recipient::parse(SPEC_IDENTITY).is_none());
        assert!(Identity::parse(&public).is_none());
    }

    #[test]
    fn a_wrapped_file_key_unwraps_with_its_identity_only() {
        use age::{Identity as _, Recipient as _};
        let id = Identity::generate();
        let other = Identity::generate();
        let key = FileKey::new(Box::new([7; FILE_KEY_BYTES]));
        let (stanzas, labels) = id
            .to_public()
            .wrap_file_key(&key)
            .expect("wrapping cannot fail");
        assert_eq!(labels, HashSet::from([PQ_LABEL.to_owned()]));
        let opened = id
            .unwrap_stanzas(&stanzas)
            .expect("the identity recognises its stanza")
            .expect("and opens it");
        assert_eq!(opened.expose_secret(), key.expose_secret());
        assert!(other.unwrap_stanzas(&stanzas).is_none());
    }
}
